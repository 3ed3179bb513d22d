"""Manifests: a JSONL or CSV catalogue of items (read row by row by `mmfuse.data.rows`), and the config that maps
its columns to modalities.

A row names a key, one or several text columns, an image path, an audio path and a label; paths are relative to
the media root (or absolute). `ShardConfig` says which column is which and how to split and shard the records; the
supervision columns are those the target kind asks for (`mmfuse.data.targets`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError, did_you_mean
from ..names import split_name_problem
from .rows import read_manifest
from .targets import TARGET_KINDS, kind_names


@dataclass
class ShardConfig:
    """How `write_shards` turns a manifest into shards. Validated on construction."""

    manifest: str
    """A `.jsonl` (one JSON object per line) or `.csv` (header row) file."""
    out: str
    """Output directory for the shards, `dataset.json` and `rejects.jsonl` (must be empty or absent)."""
    root: str | None = None
    """Media root that relative image / audio paths resolve against (default: the manifest's directory)."""
    key: str = "key"
    """Column holding each record's unique key (no '.' allowed: webdataset splits member names at the first dot)."""
    text: list[str] = field(default_factory=lambda: ["text"])
    """Text column(s); several are joined with `text_join`. Empty list: no text modality."""
    text_join: str = "\n"
    image: str | None = "image"
    """Image path column (JPEG, PNG, WebP, ...); None: no image modality."""
    audio: str | None = "audio"
    """Audio path column (WAV, FLAC, Ogg, ...); None: no audio modality."""
    task: str = "classification"
    """The supervision each record carries: classification (one label), multilabel (a list of labels, or names
    joined by `label_sep`), regression (numbers in the `targets` columns), interactions (the users of each item,
    from the `interactions` pair file) or none (unlabelled, for contrastive alignment). Recorded in dataset.json;
    see `mmfuse.data.targets`."""
    interactions: str | None = None
    """Interactions: the user-item pair file (`mmfuse.data.pairs`), JSONL or CSV with `user` and `item` columns."""
    user_column: str = "user"
    item_column: str = "item"
    """Interactions: the pair file's user and item columns (item: the manifest's key)."""
    label: str = "label"
    """Label column (classification, multilabel)."""
    labels: list[str] | None = None
    """The label vocabulary; a record with another label is refused. None: the sorted labels found."""
    label_sep: str = "|"
    """Multilabel: separator of the label names when the label cell is a string."""
    targets: list[str] = field(default_factory=list)
    """Regression: the target column(s), each a number per record."""
    split: str | None = None
    """Column naming each record's split; None: deterministic split by a hash of the key with `fractions`."""
    fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    shard_size: int = 1000
    """Most samples per shard."""
    shard_bytes: int = 256 * 1024 * 1024
    """Most bytes per shard (a shard closes once it reaches this size)."""
    workers: int = 1
    """Processes that read and check media files (1: in this process)."""
    strict: bool = False
    """Stop at the first refused record with a one-line `DataError` instead of listing it in `rejects.jsonl`."""
    empty_text: str = "reject"
    """What to do with a record whose text is empty: 'reject' it, or keep it with text 'absent'."""
    silent_audio: str = "reject"
    """What to do with an audio clip whose every sample is 0: 'reject' the record, or 'keep' it."""
    progress: bool = True

    def columns(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(option, column) pairs the manifest must have, and the modality ones of which it needs one: a column
        left at its default may be absent (that modality is simply not used); one named explicitly may not."""
        wanted = [("--key", self.key), *TARGET_KINDS[self.task].columns(self)]
        modalities = [("--text", c) for c in self.text] + [(f"--{m}", getattr(self, m)) for m in ("image", "audio")
                                                            if getattr(self, m)]
        return wanted + explicit_columns(modalities), modalities

    def __post_init__(self) -> None:
        if Path(self.manifest).suffix.lower() not in (".jsonl", ".csv"):
            raise DataError(f"manifest {self.manifest}: expected a .jsonl or .csv file")
        if isinstance(self.text, str):
            self.text = [c for c in self.text.split(",") if c]
        if not (self.text or self.image or self.audio):
            raise DataError("shard config maps no column to a modality (set text, image or audio)")
        if self.shard_size < 1 or self.shard_bytes < 1 or self.workers < 1:
            raise DataError("shard_size, shard_bytes and workers must be >= 1")
        if self.empty_text not in ("reject", "absent"):
            raise DataError(f"empty_text must be 'reject' or 'absent', got '{self.empty_text}'")
        if self.silent_audio not in ("reject", "keep"):
            raise DataError(f"silent_audio must be 'reject' or 'keep', got '{self.silent_audio}'")
        if self.split is None:
            if not self.fractions or any(f < 0 for f in self.fractions.values()) or \
                    abs(sum(self.fractions.values()) - 1.0) > 1e-6:
                raise DataError(f"split fractions must be >= 0 and sum to 1, got {self.fractions}")
            for name in self.fractions:
                if (problem := split_name_problem(name)) is not None:
                    raise DataError(f"split fractions: {problem}")
        if isinstance(self.targets, str):
            self.targets = [c for c in self.targets.split(",") if c]
        if self.task not in kind_names():
            raise DataError(f"task must be one of {', '.join(kind_names())}, got '{self.task}'")
        for kind in TARGET_KINDS.values():  # an option of one kind (--targets, --interactions) is refused by others
            for option, problem in kind.options.items():
                if (kind.name == self.task) != bool(getattr(self, option)):
                    raise DataError(problem)
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise DataError("the label vocabulary has duplicates")

    @property
    def media_root(self) -> Path:
        return Path(self.root) if self.root else Path(self.manifest).parent


def parse_fractions(text: str) -> dict[str, float]:
    """'train=0.8,val=0.1,test=0.1' -> {'train': 0.8, ...}."""
    out = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise DataError(f"split fractions: expected NAME=FRACTION, got '{part}'") from None
        if not sep or not name.strip():
            raise DataError(f"split fractions: expected NAME=FRACTION, got '{part}'")
    return out


def hash_split(key: str, fractions: dict[str, float]) -> str:
    """The split of `key`: a stable hash of the key in [0, 1) compared with the cumulative fractions."""
    point = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2**64
    total = 0.0
    for name, fraction in fractions.items():
        total += fraction
        if point < total:
            return name
    return next(name for name, f in reversed(fractions.items()) if f > 0)


def columns_of(path: str | Path) -> list[str]:
    """Every column name that occurs in some parsable row of a manifest, in order of appearance."""
    found: dict[str, None] = {}
    for _, row, _ in read_manifest(path):
        if row is not None:
            found.update(dict.fromkeys(str(k) for k in row))
    return list(found)


DEFAULT_COLUMNS = {"--text": "text", "--image": "image", "--audio": "audio"}


def explicit_columns(modalities: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (option, column) pairs not left at the option's default column name."""
    return [(option, column) for option, column in modalities if DEFAULT_COLUMNS.get(option) != column]


def require_columns(manifest: str | Path, found: list[str], wanted: list[tuple[str, str]],
                    modalities: list[tuple[str, str]] = ()) -> None:
    """Raise `DataError` for a column that is in no row of `manifest`, naming the columns that exist.

    `wanted`: (option, column) pairs that must exist; `modalities`: (option, column) pairs of which at least one
    must exist. Nothing is checked for a manifest without a parsable row.
    """
    if not found:
        return
    for option, column in wanted:
        if column not in found:
            raise DataError(f"manifest {manifest}: column '{column}' ({option}) is in no row"
                            f"{did_you_mean(column, found)}; its columns are: {', '.join(found)}")
    if modalities and not any(column in found for _, column in modalities):
        named = ", ".join(f"{option} {column}" for option, column in modalities)
        raise DataError(f"manifest {manifest}: no row has a text, image or audio column ({named}); its columns "
                        f"are: {', '.join(found)}")
