"""Where a loader is within an epoch, so a run can resume mid-epoch exactly.

The pipeline is deterministic for a given (seed, epoch, rank, number of workers). A position records, per loader
worker, how many raw samples (decoded or skipped) it has handed out, and which worker the `DataLoader` asks next.
Resuming rebuilds the same pipeline, skips each worker's consumed samples before decoding (cheap: no decode), and
rotates the worker-to-shard assignment so the DataLoader's round-robin continues with the right worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class LoaderPosition:
    """Per-worker raw-sample cursors within one epoch, and the worker whose batch comes next."""

    consumed: dict[int, int] = field(default_factory=dict)
    next_worker: int = 0

    def advance(self, worker: int, cursor: int, num_workers: int) -> None:
        """Record a batch from `worker` whose last raw sample had running number `cursor`."""
        self.consumed[worker] = cursor
        self.next_worker = (worker + 1) % max(1, num_workers)

    def to_dict(self) -> dict[str, Any]:
        return {"consumed": {str(k): v for k, v in self.consumed.items()}, "next_worker": self.next_worker}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoaderPosition:
        return cls({int(k): int(v) for k, v in data.get("consumed", {}).items()}, int(data.get("next_worker", 0)))


def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def split_by_worker_rotated(rotation: int):
    """`wds.split_by_worker`, but DataLoader worker w reads the shards of logical worker (w + rotation) % n."""

    def stage(urls: Iterator[Any]) -> Iterator[Any]:
        worker, n = _worker()
        logical = (worker + rotation) % n
        for i, url in enumerate(urls):
            if i % n == logical:
                yield url

    return stage


def cursor_stage(position: LoaderPosition | None):
    """Number raw samples per logical worker (`__cursor__`, `__worker__`) and skip those already consumed."""

    def stage(samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        worker, n = _worker()
        rotation = position.next_worker if position else 0
        logical = (worker + rotation) % n
        skip = position.consumed.get(logical, 0) if position else 0
        for count, sample in enumerate(samples, start=1):
            if count <= skip:
                continue
            sample["__cursor__"], sample["__worker__"] = count, logical
            yield sample

    return stage
