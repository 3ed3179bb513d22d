"""`mmfuse list`: registered encoders, fusions, tasks and model presets."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list registered encoders, fusions, tasks and model presets")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..encoders import list_encoders
    from ..fusion import list_fusions
    from ..presets import describe_preset, list_presets
    from ..tasks import list_tasks

    print("encoders:", ", ".join(list_encoders()))
    print("fusions: ", ", ".join(list_fusions()))
    print("tasks:   ", ", ".join(list_tasks()))
    print("presets:")
    for name in list_presets():
        print(f"  {name:<24} {describe_preset(name)}")
    return 0
