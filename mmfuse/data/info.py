"""`dataset.json`: what a shard directory holds (splits, shards, modalities, labels). The loader reads it."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..names import split_name_problem
from ..outputs import write_atomic
from .targets import get_kind, kind_names


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


FORMAT = "mmfuse-shards/1"
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def write_dataset_json(directory: Path, meta: dict[str, Any]) -> Path:
    """Write `directory/dataset.json` (atomically) from `meta`, stamped with this `FORMAT`. Returns its path."""
    path = Path(directory) / "dataset.json"
    write_atomic(path, json.dumps({"format": FORMAT, **{k: v for k, v in meta.items() if k != "format"}}, indent=2))
    return path


def _check_types(file: Path, meta: Any) -> None:
    """The shape of dataset.json's fields: a wrong type is a one-line `DataError` naming the field."""
    modalities = meta["modalities"]
    if not isinstance(modalities, dict) or not all(
            isinstance(exts, list) and all(isinstance(e, str) for e in exts) for exts in modalities.values()):
        raise DataError(f"{file}: 'modalities' must map each modality to a list of member extensions, e.g. "
                        f'{{"text": ["txt"], "image": ["jpg", "png"]}}, got {json.dumps(modalities)[:80]}')
    if not isinstance(meta["labels"], list):
        raise DataError(f"{file}: 'labels' must be a list, got {json.dumps(meta['labels'])[:80]}")
    splits = meta["splits"]
    if not isinstance(splits, dict):
        raise DataError(f"{file}: 'splits' must map each split to its shards and count")
    for name, split in splits.items():
        if not isinstance(split, dict) or not isinstance(split.get("shards"), list) or \
                not all(isinstance(s, dict) and isinstance(s.get("path"), str) for s in split["shards"]):
            raise DataError(f"{file}: split '{name}' must be {{\"shards\": [{{\"path\": ...}}, ...], \"count\": N}}")
        count = split.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise DataError(f"{file}: split '{name}' needs a sample 'count' >= 0, got {count!r}")
PICKLE_EXTENSIONS = frozenset({"pyd", "pickle", "pkl", "pth", "pt", "ckpt", "joblib"})
"""Member extensions whose decoders unpickle; mmfuse never decodes them (the loader reports and ignores them)."""


def shard_path(root: Path, relative: object) -> Path | None:
    """Where a `dataset.json` shard entry points, or None if it may not be read: it must be a relative path
    (never absolute, no '~') to a file named `*.tar` / `*.tar.gz` / `*.tgz`. Shards described in place by
    `mmfuse shard --from-shards` may lie beside the dataset's folder ('../'), so '..' is allowed; the suffix and
    the regular-file check keep a hostile `dataset.json` from reading other files (devices, /etc/...)."""
    if not isinstance(relative, str) or not relative or "\x00" in relative or os.path.isabs(relative) \
            or relative.startswith("~") or not relative.lower().endswith(SHARD_SUFFIXES):
        return None
    return root / relative


@dataclass
class DatasetInfo:
    """A parsed `dataset.json`. `modalities` maps a modality to the member extensions that may hold it."""

    root: Path
    modalities: dict[str, list[str]]
    labels: list[str]
    label_field: str
    splits: dict[str, dict[str, Any]]
    label_encoding: str = "index"
    """How `.<label_field>` members hold the label: 'index' (into `labels`) or 'name' (a member of `labels`)."""
    task: str = "classification"
    """The supervision the samples carry: a registered target kind (`mmfuse.data.targets`)."""
    targets: list[str] = field(default_factory=list)
    """Regression target names, in the order of each sample's `.tgt` values."""
    target_stats: dict[str, list[float]] = field(default_factory=dict)
    """Regression only: {'mean': [...], 'std': [...]} per target over the train split."""
    users: list[str] = field(default_factory=list)
    """Interactions only: the user vocabulary; each item's `.usr` member holds indices into it."""
    meta: dict[str, Any] = field(default_factory=dict, repr=False)
    """The whole `dataset.json` (a target kind's own fields: `mmfuse.data.targets`)."""

    @classmethod
    def load(cls, path: str | Path, verify: bool = False) -> DatasetInfo:
        """Read `path/dataset.json` (or `path` itself if it is the json file) and check it.

        Every shard must exist and have the size recorded in `dataset.json`; with `verify` its sha256 is checked too.
        """
        path = Path(path)
        file = path if path.suffix == ".json" else path / "dataset.json"
        if not path.exists():
            raise DataError(f"data path {path} does not exist")
        if not file.exists():
            raise DataError(f"{file} not found: a shard directory needs a dataset.json (write one with "
                            f"`mmfuse shard --manifest ITEMS.jsonl --out DIR`, or `mmfuse demo-data`)")
        if not file.is_file():
            raise DataError(f"{file} is a directory, not a dataset.json file")
        try:
            meta = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            why = f"{err.msg} at line {err.lineno}" if isinstance(err, json.JSONDecodeError) else "not UTF-8 text"
            raise DataError(f"{file} is corrupt (not valid JSON: {why}); rewrite it with `mmfuse shard` or restore "
                            f"it") from None
        if not isinstance(meta, dict):
            raise DataError(f"{file} must hold a JSON object with modalities, labels and splits")
        missing = [k for k in ("modalities", "labels", "splits") if k not in meta]
        if missing:
            raise DataError(f"{file} lacks the field(s): {', '.join(missing)}")
        if meta.get("format", FORMAT) != FORMAT:
            raise DataError(f"{file} has format '{meta['format']}', this mmfuse reads '{FORMAT}'")
        _check_types(file, meta)
        info = cls(root=file.parent, modalities=meta["modalities"], labels=list(meta["labels"]),
                   label_field=meta.get("label_field", "cls"), splits=meta["splits"],
                   label_encoding=meta.get("label_encoding", "index"), task=meta.get("task", "classification"),
                   targets=list(meta.get("targets", [])), target_stats=dict(meta.get("target_stats", {})),
                   users=list(meta.get("users", [])), meta=meta)
        if info.label_encoding not in ("index", "name"):
            raise DataError(f"{file}: label_encoding must be 'index' or 'name', got '{info.label_encoding}'")
        if info.task not in kind_names():
            raise DataError(f"{file}: task must be one of {', '.join(kind_names())}, got '{info.task}'")
        get_kind(info.task).check(file, info)
        for split in info.splits:
            if (problem := split_name_problem(split)) is not None:  # split names become file names (caches)
                raise DataError(f"{file}: splits: {problem}")
            for shard in info.splits[split]["shards"]:
                info._check_shard(file, split, shard, verify)
        return info

    def _check_shard(self, file: Path, split: str, shard: dict[str, Any], verify: bool) -> None:
        path = shard_path(self.root, shard.get("path"))
        if path is None:
            raise DataError(f"{file}: shard path {shard.get('path')!r} of split '{split}' is not allowed: a shard "
                            f"is a .tar file named by a relative path (inside the dataset's folder, or beside it "
                            f"for shards described in place by `mmfuse shard --from-shards`)")
        if not path.exists():
            raise DataError(f"{file}: shard {shard['path']} of split '{split}' is missing")
        if not path.is_file():
            raise DataError(f"{file}: shard {shard['path']} of split '{split}' is not a regular file")
        size = path.stat().st_size
        if "bytes" in shard and size != shard["bytes"]:
            raise DataError(f"shard {path} has changed: {size} bytes, {file.name} says {shard['bytes']} "
                            f"(rewrite the shards, or their dataset.json if the change is intended)")
        if verify and "sha256" in shard:
            if sha256_file(path) != shard["sha256"]:
                raise DataError(f"shard {path} has changed: its sha256 differs from {file.name}'s "
                                f"(rewrite the shards, or their dataset.json if the change is intended)")

    @functools.cached_property
    def label_index(self) -> dict[str, int]:
        """Label name -> index into `labels`."""
        return {name: index for index, name in enumerate(self.labels)}

    def require_split(self, split: str) -> dict[str, Any]:
        if split not in self.splits:
            raise DataError(f"{self.root}/dataset.json has no split '{split}' (has: {', '.join(self.splits)})")
        return self.splits[split]

    def shard_urls(self, split: str) -> list[str]:
        """Absolute shard paths: never a relative name that webdataset would read as a URL ('pipe:cmd' runs cmd)."""
        return [os.path.abspath(self.root / s["path"]) for s in self.require_split(split)["shards"]]

    def count(self, split: str) -> int:
        return int(self.require_split(split)["count"])

    def require_modalities(self, modalities: list[str]) -> None:
        missing = [m for m in modalities if m not in self.modalities]
        if missing:
            raise DataError(f"{self.root}/dataset.json has no modality {', '.join(missing)} "
                            f"(has: {', '.join(self.modalities)})")
