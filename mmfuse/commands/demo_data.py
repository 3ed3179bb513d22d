"""`mmfuse demo-data`: build or locate the embedded demo dataset."""

from __future__ import annotations

import argparse

from .common import HelpFormatter


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo-data", help="write (or locate) the embedded demo dataset's shards",
                       formatter_class=HelpFormatter)
    p.add_argument("--out", help="write the shards here instead of the user cache directory")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.add_argument("--caption-colour", action="store_true",
                   help="paint each shape in the colour its text names (the contrastive task's demo data)")
    p.add_argument("--manifest", metavar="DIR",
                   help="instead write the demo catalogue as DIR/items.jsonl + DIR/media/ (input of `mmfuse shard`)")
    p.add_argument("--count", type=int, default=2000, help="with --manifest: number of items")
    p.add_argument("--faults", action="store_true", help="with --manifest: append one row of each known fault")
    p.add_argument("--interactions", action="store_true",
                   help="add users who like one or two (shape, material) combinations and their user-item pairs "
                        "(pairs.csv beside the shards or the manifest; the interactions task's demo data)")
    p.add_argument("--users", type=int, default=100, help="with --interactions: number of users")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.demo import DemoSpec, build_demo, demo_dataset
    from ..outputs import check_output_dir

    if args.out:
        check_output_dir(args.out)
    if args.manifest:
        from ..data.demo_manifest import write_demo_manifest

        print(write_demo_manifest(args.manifest, args.count, seed=args.seed, faults=args.faults,
                                  users=args.users if args.interactions else 0))
        return 0

    spec = DemoSpec(seed=args.seed, caption_colour=args.caption_colour, interactions=args.interactions,
                    users=args.users)
    path = build_demo(args.out, spec) if args.out else demo_dataset(spec)
    print(path)
    return 0
