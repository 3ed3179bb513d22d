"""`mmfuse shard`: a manifest + media files -> checked WebDataset shards (or a dataset.json for existing shards)."""

from __future__ import annotations

import argparse

from .columns import add_manifest_options
from .common import HelpFormatter


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "shard", help="turn a JSONL/CSV manifest into checked WebDataset shards with a dataset.json",
        description="Read every row of a manifest, check its media (missing file, unreadable or truncated image, "
                    "unreadable audio, empty text, unknown label, duplicate key), write the accepted rows as "
                    "WebDataset shards with a dataset.json, and list the refused ones in OUT/rejects.jsonl. "
                    "With --from-shards, describe existing shards instead (no copy).",
        formatter_class=HelpFormatter)
    add_manifest_options(p, key_help="key column (unique per row)")
    p.add_argument("--out", required=True, help="output directory (new or empty)")
    p.add_argument("--task", default="classification", metavar="KIND",
                   help="a registered target kind, what each row is labelled with: classification (one label), "
                        "multilabel (a JSON list, or names joined by --label-sep), regression (numbers in the "
                        "--targets columns), interactions (the users that interacted with it: pairs from "
                        "--interactions) or none (contrastive alignment)")
    p.add_argument("--interactions", metavar="PAIRS",
                   help="interactions: user-item pair file (.csv with a header, or .jsonl) with --user-column and "
                        "--item-column (the item's key); sets --task interactions")
    p.add_argument("--user-column", default="user", help="interactions: the pair file's user column")
    p.add_argument("--item-column", default="item", help="interactions: the pair file's item column")
    p.add_argument("--label", default="label", help="label column")
    p.add_argument("--label-sep", default="|", help="multilabel: separator of label names in a string cell")
    p.add_argument("--targets", default="", help="regression: target column(s), comma-separated")
    p.add_argument("--labels", help="the label vocabulary, comma-separated; other labels are refused "
                                    "(default: every label found)")
    p.add_argument("--split", help="split column (default: split by a hash of the key with --fractions)")
    p.add_argument("--fractions", default="train=0.8,val=0.1,test=0.1", help="hash split fractions")
    p.add_argument("--shard-size", type=int, default=1000, help="most samples per shard")
    p.add_argument("--shard-mb", type=float, default=256.0, help="most megabytes per shard")
    p.add_argument("--workers", type=int, default=1, help="processes that read and check the media")
    p.add_argument("--empty-text", choices=["reject", "absent"], default="reject",
                   help="refuse a row with empty text, or keep it with text absent")
    p.add_argument("--silent-audio", choices=["reject", "keep"], default="reject",
                   help="refuse a row whose audio clip is all zeros, or keep it")
    p.add_argument("--strict", action="store_true", help="stop at the first refused row (one-line error)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--from-shards", action="append", metavar="[SPLIT=]GLOB",
                   help="describe existing shards instead of reading a manifest (repeatable; split default train)")
    p.add_argument("--map", help="with --from-shards: member extension -> modality, e.g. txt=text,jpg=image")
    p.add_argument("--label-field", default="cls", help="with --from-shards: the label member's extension")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import DataError
    from ..outputs import check_output_dir

    check_output_dir(args.out)  # before any row is read
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    if args.from_shards:
        from ..data.foreign import index_shards, parse_mapping

        if not args.map:
            raise DataError("--from-shards needs --map EXT=MODALITY,... (e.g. --map txt=text,jpg=image)")
        meta = index_shards(args.from_shards, parse_mapping(args.map), args.out, label_field=args.label_field,
                            labels=labels)
        counts = ", ".join(f"{s} {e['count']}" for s, e in meta["splits"].items())
        notes = "".join(f"; {reason} x{n}" for reason, n in meta["report"].items())
        print(f"mmfuse: described {counts} samples, {len(meta['labels'])} labels in {args.out}/dataset.json{notes}")
        return 0
    if not args.manifest:
        raise DataError("mmfuse shard needs --manifest FILE (or --from-shards GLOB --map ...)")
    from ..data.manifest import ShardConfig, parse_fractions
    from ..data.shard import write_shards

    task = "interactions" if args.interactions else args.task
    config = ShardConfig(
        manifest=args.manifest, out=args.out, root=args.root, key=args.key, text=args.text,
        image=args.image or None, audio=args.audio or None, label=args.label, labels=labels, split=args.split,
        task=task, interactions=args.interactions, user_column=args.user_column, item_column=args.item_column,
        label_sep=args.label_sep, targets=args.targets,
        fractions=parse_fractions(args.fractions), shard_size=args.shard_size,
        shard_bytes=int(args.shard_mb * 1024 * 1024), workers=args.workers, strict=args.strict,
        empty_text=args.empty_text, silent_audio=args.silent_audio, progress=not args.no_progress)
    print(write_shards(config).summary())
    return 0
