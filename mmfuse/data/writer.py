"""Write samples into WebDataset tar shards and describe them for `dataset.json`."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import webdataset as wds


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_split(out: Path, split: str, samples: Iterable[dict[str, Any]], shard_size: int) -> dict[str, Any]:
    """Write `samples` as `out/<split>-NNNNNN.tar` shards of at most `shard_size` samples.

    Returns the split's entry of `dataset.json`: total count and, per shard, its file name, count and sha256.
    """
    pattern = str(out / f"{split}-%06d.tar")
    counts: list[int] = []
    # An integer mtime keeps plain ustar headers (no per-member PAX header), which halves tar parsing time when reading.
    with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0, mtime=0) as sink:
        for index, sample in enumerate(samples):
            if index % shard_size == 0:
                counts.append(0)
            sink.write(sample)
            counts[-1] += 1
    shards = []
    for index, count in enumerate(counts):
        name = f"{split}-{index:06d}.tar"
        shards.append({"path": name, "count": count, "sha256": sha256_file(out / name)})
    return {"count": sum(counts), "shards": shards}
