"""Where `mmfuse embed` reads items from: a JSONL/CSV manifest with media paths, or shards with a dataset.json.

Each row becomes an `Item`: its id, a record for `Embedder.prepare` (text str; image / audio bytes), and what is
already known to be wrong with it (an unparsable row, a missing key, a missing, corrupt, truncated or silent media
file, an empty text). Manifest media go through the checks `mmfuse shard` runs (`mmfuse.data.checks`), so both
commands refuse the same rows for the same reasons.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.info import sha256_file
from ..data.manifest import columns_of, explicit_columns, require_columns
from ..data.rows import read_manifest
from ..errors import DataError, FieldError


@dataclass
class Item:
    """One input row. `error` (whole row unusable) and `failed` ({modality: reason}) come from reading it."""

    id: str
    record: dict[str, Any]
    where: str
    error: str = ""
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class ManifestSource:
    """Columns of a manifest: id column, text column(s) joined by `join`, image and audio path columns."""

    path: str
    root: str | None = None
    key: str = "key"
    text: Sequence[str] = ("text",)
    image: str | None = "image"
    audio: str | None = "audio"
    join: str = "\n"

    def __post_init__(self) -> None:
        if Path(self.path).suffix.lower() not in (".jsonl", ".csv"):
            raise DataError(f"manifest {self.path}: expected a .jsonl or .csv file")
        if not Path(self.path).is_file():
            raise DataError(f"manifest {self.path} does not exist")
        modalities = [("--text", c) for c in self.text] + [(f"--{m}", getattr(self, m)) for m in ("image", "audio")
                                                            if getattr(self, m)]
        require_columns(self.path, columns_of(self.path), [("--key", self.key), *explicit_columns(modalities)],
                        modalities)

    def describe(self) -> dict[str, Any]:
        """What identifies this input (a resumed export must read the same rows)."""
        return {"kind": "manifest", "path": str(Path(self.path).resolve()), "sha256": sha256_file(Path(self.path)),
                "root": str(self._root()), "key": self.key, "text": list(self.text), "image": self.image,
                "audio": self.audio}

    def count(self) -> int:
        """Rows (for the progress bar): non-blank lines of a JSONL file, lines after the header of a CSV."""
        with open(self.path, encoding="utf-8", errors="replace") as f:
            lines = sum(1 for line in f if line.strip())
        return lines - 1 if self.path.lower().endswith(".csv") else lines

    def _root(self) -> Path:
        return Path(self.root) if self.root else Path(self.path).parent

    def items(self) -> Iterator[Item]:
        root = self._root()
        name = Path(self.path).name
        for line, row, error in read_manifest(self.path):
            where = f"{name}:{line}"
            if row is None:
                yield Item("", {}, where, error=f"row: {error}")
                continue
            key = row.get(self.key)
            if key is None or not str(key).strip():
                yield Item("", {}, where, error=f"{self.key}: missing id")
                continue
            yield self._item(str(key).strip(), row, where, root)

    def _item(self, key: str, row: dict[str, Any], where: str, root: Path) -> Item:
        """The row's record; a field `mmfuse shard` would refuse goes to `item.failed` with the shard's reason."""
        from ..data.checks import check_audio, check_image
        from ..encoders.image_io import read_media_file
        from ..limits import LimitExceeded

        item = Item(key, {"key": key}, where)
        texts = [str(row[c]).strip() for c in self.text if row.get(c) is not None and str(row[c]).strip()]
        if texts:
            item.record["text"] = self.join.join(texts)
        elif any(row.get(c) is not None for c in self.text):
            item.failed["text"] = "empty text"
        for modality, column, check in (("image", self.image, check_image), ("audio", self.audio, check_audio)):
            value = row.get(column) if column else None
            if value is None or not str(value).strip():
                continue
            path = Path(str(value).strip())
            path = path if path.is_absolute() else root / path
            if not path.is_file():
                item.failed[modality] = f"missing file {path}"
                continue
            try:
                data = read_media_file(path)
                check(data, path.suffix.lower().lstrip("."), modality)  # decodes it in full, as the shard writer does
                item.record[modality] = data
            except OSError as err:
                item.failed[modality] = f"unreadable file {path}: {err.strerror}"
            except FieldError as refused:
                item.failed[modality] = refused.reason
            except LimitExceeded as err:
                item.failed[modality] = str(err)
        return item


@dataclass
class ShardSource:
    """Shards described by a dataset.json (`mmfuse shard` or `mmfuse demo-data`), `splits` in order (default all)."""

    directory: str
    splits: Sequence[str] | None = None

    def __post_init__(self) -> None:
        from ..data.info import DatasetInfo

        self.info = DatasetInfo.load(self.directory)
        self.splits = list(self.splits or self.info.splits)
        for split in self.splits:
            self.info.require_split(split)

    def describe(self) -> dict[str, Any]:
        return {"kind": "shards", "path": str(self.info.root.resolve()), "splits": list(self.splits),
                "sha256": sha256_file(self.info.root / "dataset.json")}

    def count(self) -> int:
        return sum(self.info.count(split) for split in self.splits)

    def items(self) -> Iterator[Item]:
        """The records of each split; unreadable shard data, and a split that yields fewer records than
        dataset.json lists, become rejected rows (id '') naming the shard or split."""
        from ..data.loader import read_records

        for split in self.splits:
            errors: list[Exception] = []
            read = 0
            for record in read_records(self.info, split, handler=lambda exn, errors=errors: errors.append(exn) or True):
                yield from self._shard_errors(split, errors)
                record.pop("label", None)
                refused = record.pop("_refused", "")
                read += 1
                yield Item(record["key"], record, f"{split}/{record['key']}", error=refused)
            yield from self._shard_errors(split, errors)
            if read < self.info.count(split):
                yield Item("", {}, split, error=f"shard: fewer samples than dataset.json lists (split '{split}' "
                                                f"yielded {read} of {self.info.count(split)})")

    @staticmethod
    def _shard_errors(split: str, errors: list[Exception]) -> Iterator[Item]:
        from ..data.loader import shard_reason

        while errors:
            exn = errors.pop(0)
            yield Item("", {}, split, error=f"{shard_reason(exn)} ({str(exn)[:200]})")
