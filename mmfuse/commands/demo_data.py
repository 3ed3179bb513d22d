"""`mmfuse demo-data`: build or locate the embedded demo dataset."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo-data", help="write (or locate) the embedded demo dataset's shards",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", help="write the shards here instead of the user cache directory")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.demo import DemoSpec, build_demo, demo_dataset

    spec = DemoSpec(seed=args.seed)
    path = build_demo(args.out, spec) if args.out else demo_dataset(spec)
    print(path)
    return 0
