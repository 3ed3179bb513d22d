"""Write samples into WebDataset tar shards and describe them for `dataset.json`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import webdataset as wds

from ..errors import DataError
from ..names import split_name_problem
from .info import sha256_file


def shard_entry(path: Path, name: str, count: int) -> dict[str, Any]:
    """One shard's `dataset.json` entry: file name (relative to dataset.json), sample count, size and sha256."""
    return {"path": name, "count": count, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


class SplitWriter:
    """Writes one split as `out/<split>-NNNNNN.tar` shards of at most `shard_size` samples and `max_bytes` bytes.

    Use as a context manager; `entry()` (after closing) is the split's `dataset.json` entry.
    """

    def __init__(self, out: Path, split: str, shard_size: int, max_bytes: int | None = None) -> None:
        if (problem := split_name_problem(split)) is not None:  # the name is a file-name prefix inside `out`
            raise DataError(problem)
        self.out, self.split = Path(out), split
        self.counts: list[int] = []
        # An integer mtime keeps plain ustar headers (no per-member PAX header): half the tar parsing time on read.
        self.sink = wds.ShardWriter(str(self.out / f"{split}-%06d.tar"), maxcount=shard_size,
                                    maxsize=max_bytes or 3e9, verbose=0, mtime=0)

    def write(self, sample: dict[str, Any]) -> None:
        self.sink.write(sample)
        index = self.sink.shard - 1  # ShardWriter has opened shard `index` for this sample
        while len(self.counts) <= index:
            self.counts.append(0)
        self.counts[index] += 1

    def close(self) -> None:
        self.sink.close()

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def entry(self) -> dict[str, Any]:
        shards = [shard_entry(self.out / f"{self.split}-{i:06d}.tar", f"{self.split}-{i:06d}.tar", n)
                  for i, n in enumerate(self.counts)]
        return {"count": sum(self.counts), "shards": shards}


def write_split(out: Path, split: str, samples: Iterable[dict[str, Any]], shard_size: int,
                max_bytes: int | None = None) -> dict[str, Any]:
    """Write `samples` as `out/<split>-NNNNNN.tar` shards of at most `shard_size` samples (and `max_bytes`).

    Returns the split's entry of `dataset.json`: total count and, per shard, its file name, count, bytes and sha256.
    """
    with SplitWriter(out, split, shard_size, max_bytes) as writer:
        for sample in samples:
            writer.write(sample)
    return writer.entry()
