"""Describe WebDataset shards written by other tools: a `dataset.json` that maps their member extensions to modalities.

The shards stay where they are (`dataset.json` refers to them by relative path). One read of every shard counts its
samples, collects the labels and notes members that would need pickle to decode: those are reported, never decoded.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from pathlib import Path
from typing import Any

import webdataset as wds

from ..errors import DataError
from ..names import split_name_problem
from ..outputs import check_output_dir
from .info import FORMAT, PICKLE_EXTENSIONS, write_dataset_json
from .tario import tar_samples
from .writer import shard_entry

MODALITIES = ("text", "image", "audio")


def parse_mapping(text: str) -> dict[str, str]:
    """'txt=text,jpg=image' -> {'txt': 'text', 'jpg': 'image'} (member extension -> modality)."""
    mapping = {}
    for part in text.split(","):
        ext, sep, modality = (s.strip() for s in part.partition("="))
        if not sep or not ext or modality not in MODALITIES:
            raise DataError(f"--map: expected EXT=MODALITY with MODALITY in {', '.join(MODALITIES)}, got '{part}'")
        if ext.lstrip(".") in PICKLE_EXTENSIONS:
            raise DataError(f"--map: .{ext.lstrip('.')} members need pickle to decode; mmfuse never unpickles")
        mapping[ext.lstrip(".")] = modality
    return mapping


def _expand(sources: list[str]) -> dict[str, list[Path]]:
    """['train=dir/train-*.tar', 'dir/val-*.tar'] -> {split: sorted shard paths}; default split 'train'."""
    splits: dict[str, list[Path]] = {}
    for source in sources:
        split, sep, pattern = source.partition("=")
        if not sep:
            split, pattern = "train", source
        if (problem := split_name_problem(split)) is not None:
            raise DataError(f"--from-shards '{source}': {problem}")
        paths = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern)))
        if not paths:
            raise DataError(f"--from-shards: no file matches '{pattern}'")
        splits.setdefault(split, []).extend(paths)
    return splits


def index_shards(sources: list[str], mapping: dict[str, str], out: str | Path, *, label_field: str = "cls",
                 labels: list[str] | None = None) -> dict[str, Any]:
    """Write `out/dataset.json` for existing shards. Returns it, with a `report` of what the scan found."""
    out = check_output_dir(out)
    if (out / "dataset.json").exists():
        raise DataError(f"{out / 'dataset.json'} exists already (remove it or choose another --out)")
    sources_by_split = _expand(sources)  # split names checked before anything is written
    out.mkdir(parents=True, exist_ok=True)
    splits: dict[str, Any] = {}
    found: Counter[str] = Counter()
    report: Counter[str] = Counter()
    for split, paths in sources_by_split.items():
        shards = []
        for path in paths:
            count = 0
            try:
                for raw in wds.DataPipeline(wds.SimpleShardList([str(path)]), tar_samples()):
                    count += 1
                    for ext in raw:
                        if ext in PICKLE_EXTENSIONS:
                            report[f"pickle member .{ext} (ignored, never decoded)"] += 1
                    if label_field in raw:
                        found[raw[label_field].decode("utf-8", "replace").strip()] += 1
                    else:
                        report[f"no .{label_field} label member (skipped by the loader)"] += 1
            except Exception as err:  # noqa: BLE001 - tarfile and webdataset raise many types for a bad tar
                raise DataError(f"{path}: not a readable tar shard ({type(err).__name__}: {err})") from None
            shards.append(shard_entry(path, os.path.relpath(path, out), count))
        splits[split] = {"count": sum(s["count"] for s in shards), "shards": shards}
    encoding, labels = _vocabulary(found, labels)
    modalities: dict[str, list[str]] = {}
    for ext, modality in mapping.items():
        modalities.setdefault(modality, []).append(ext)
    meta = {"name": out.name, "modalities": modalities, "label_field": label_field,
            "label_encoding": encoding, "labels": labels, "splits": splits,
            "source": {"shards": sources, "map": mapping}, "report": dict(report)}
    write_dataset_json(out, meta)
    return {"format": FORMAT, **meta}


def _vocabulary(found: Counter[str], labels: list[str] | None) -> tuple[str, list[str]]:
    """Labels stored as indices ('0', '1', ...) or as names; the vocabulary given or the one found."""
    if found and all(v.isdigit() for v in found):
        top = max(int(v) for v in found)
        if labels is not None and top >= len(labels):
            raise DataError(f"the shards hold label index {top} but --labels names only {len(labels)} labels")
        return "index", labels if labels is not None else [str(i) for i in range(top + 1)]
    if labels is not None:
        unknown = sorted(set(found) - set(labels))
        if unknown:
            raise DataError(f"the shards hold labels not in --labels: {', '.join(unknown[:5])}")
        return "name", labels
    return "name", sorted(found)
