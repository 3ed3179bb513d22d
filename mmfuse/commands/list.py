"""`mmfuse list`: registered encoders and fusions."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list registered encoders and fusions")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..encoders import list_encoders
    from ..fusion import list_fusions

    print("encoders:", ", ".join(list_encoders()))
    print("fusions: ", ", ".join(list_fusions()))
    return 0
