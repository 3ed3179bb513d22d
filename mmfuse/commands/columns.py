"""Manifest options shared by `mmfuse shard` and `mmfuse embed`: the file, its media root, and which columns hold
the key and each modality."""

from __future__ import annotations

import argparse


def add_manifest_options(p: argparse.ArgumentParser, key_help: str) -> None:
    """--manifest, --root, --key, --text, --image, --audio (column names; '' for no image / audio column)."""
    p.add_argument("--manifest", help="items.jsonl or items.csv, one row per item")
    p.add_argument("--root", help="media root for relative paths (default: the manifest's directory)")
    p.add_argument("--key", default="key", help=key_help)
    p.add_argument("--text", default="text", help="text column(s), comma-separated; joined with newlines")
    p.add_argument("--image", default="image", help="image path column ('' for none)")
    p.add_argument("--audio", default="audio", help="audio path column ('' for none)")
