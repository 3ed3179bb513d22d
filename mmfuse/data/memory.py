"""In-memory epochs of a split whose every modality is served from the feature cache, in the pipeline's own order.

When every modality a model reads is cached (`KeyLookup`), an epoch needs of each sample only its key, its target
and its presence flags. `MemorySplit` decodes those once per split from the `index_split` index (no tar file is
read) and `MemorySplit.batches` then emits each epoch's batches from them without a pipeline, decoding or loader
worker processes, in exactly the order and with exactly the entries of `build_pipeline` + `make_loader` over the same
index:

- shards shuffled per (seed, epoch) by webdataset's own `detshuffle`, split between ranks like `wds.split_by_node`
  and between the loader's (logical, rotated) workers like `split_by_worker_rotated`;
- each worker's row numbers shuffled by webdataset's own `shuffle` buffer (seed * 1000 + epoch), its consumed rows
  skipped (`LoaderPosition`), its samples batched like `wds.batched` and its batches taken round-robin as a
  `DataLoader` takes them, starting at the position's next worker;
- the same `cursor`, `skipped` and `ignored` entries, collated by the same `Collator`.

So a run gives the same metrics for the same seed, and a `LoaderPosition` from either path resumes the other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import webdataset as wds
from torch.utils.data import default_convert

from ..encoders.base import Preprocessor
from .batch import Collator
from .cached import KeyLookup
from .info import DatasetInfo
from .loader import decode_counted
from .position import LoaderPosition

Row = tuple[dict[str, Any] | None, str | None, dict[str, int]]
"""One raw sample: (decoded sample or None, the reason it is skipped or None, its ignored members)."""


class MemorySplit:
    """The decoded samples of one fully cached split, by row in index order (shard by shard), built on first use
    per (modalities, target, strict)."""

    def __init__(self, info: DatasetInfo, split: str, index: dict[str, list[dict[str, Any]]]) -> None:
        self.info, self.split, self.index = info, split, index
        self._rows: dict[tuple[Any, ...], list[Row]] = {}
        self.spans: dict[str, range] = {}  # shard url -> its rows
        start = 0
        for url in info.shard_urls(split):
            self.spans[url] = range(start, start + len(index[url]))
            start += len(index[url])

    def rows(self, preprocessors: Mapping[str, Preprocessor], lookups: Mapping[str, KeyLookup], target: str | None,
             strict: bool) -> list[Row]:
        """Every raw sample of the split decoded once (keys, targets, presence by `lookups`)."""
        memo = (tuple(sorted(preprocessors)), target, strict)
        if memo not in self._rows:
            rows, warned = [], set()
            for url in self.info.shard_urls(self.split):
                for raw in self.index[url]:
                    ignored: Counter[str] = Counter()
                    out = decode_counted({**raw, "__url__": url}, self.info, preprocessors, strict, target, lookups,
                                         ignored, warned)
                    if isinstance(out, str):
                        rows.append((None, out, dict(ignored)))
                    else:
                        out.pop("_cursor", None)
                        rows.append((out, None, dict(ignored)))
            self._rows[memo] = rows
        return self._rows[memo]

    def loader(self, preprocessors: Mapping[str, Preprocessor], batch_size: int, *,
               index: dict[str, list[dict[str, Any]]] | None = None, epoch_samples: int | None = None,
               resampled: bool = False, **kwargs: Any) -> MemoryLoader:
        """What `make_loader(..., memory=self)` returns: an iterable over `batches(preprocessors, batch_size,
        **kwargs)`, a new pass each time it is iterated (`index`, `epoch_samples` and `resampled` are the
        pipeline's: a resampled epoch is never served from memory)."""
        if resampled:
            raise ValueError("a resampled epoch is read by the pipeline, not from memory")
        return MemoryLoader(self, preprocessors, batch_size, kwargs)

    def batches(self, preprocessors: Mapping[str, Preprocessor], batch_size: int, *,
                lookups: Mapping[str, KeyLookup], shuffle: bool = False, seed: int = 0, epoch: int = 0,
                shuffle_buffer: int = 1000, strict: bool = False, drop_last: bool = False,
                position: LoaderPosition | None = None, every_rank: bool = False, target: str | None = None,
                num_workers: int = 0) -> Iterator[dict[str, Any]]:
        """One epoch's batches, as `make_loader(..., num_workers=num_workers, **these)` over the index yields them
        (see the module docstring)."""
        if missing := sorted(set(preprocessors) - set(lookups)):
            raise ValueError(f"an in-memory split needs every modality looked up; not cached: {missing}")
        rows = self.rows(preprocessors, lookups, target, strict)
        urls = self.info.shard_urls(self.split)
        workers = max(1, min(num_workers, len(urls)))  # make_loader caps workers at the number of shards
        if shuffle:
            urls = list(wds.detshuffle(bufsize=len(urls), initial=len(urls), seed=seed, epoch=epoch - 1).run(
                iter(urls)))
        if not every_rank:
            rank, world = wds.utils.pytorch_worker_info()[:2]
            urls = urls[rank::world]
        collate = Collator(preprocessors, looked_up=list(lookups), split=self.split)
        rotation = position.next_worker if position else 0
        streams = []
        for worker in range(workers):  # DataLoader worker w reads the shards of logical worker (w + rotation) % n
            logical = (worker + rotation) % workers
            ids = [i for k, url in enumerate(urls) if k % workers == logical for i in self.spans[url]]
            if shuffle:
                ids = list(wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100),
                                       seed=seed * 1000 + epoch)(iter(ids)))
            skip = position.consumed.get(logical, 0) if position else 0
            samples = _samples(rows, ids, logical, skip)
            streams.append(_batched(samples, batch_size, collate, drop_last))
        return _round_robin(streams)


class MemoryLoader:
    """An epoch of a `MemorySplit` as a loader: each iteration is one pass (`MemorySplit.batches`)."""

    def __init__(self, split: MemorySplit, preprocessors: Mapping[str, Preprocessor], batch_size: int,
                 kwargs: dict[str, Any]) -> None:
        self.split, self.preprocessors, self.batch_size, self.kwargs = split, preprocessors, batch_size, kwargs

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.split.batches(self.preprocessors, self.batch_size, **self.kwargs):
            yield default_convert(batch)  # what a DataLoader without batching does to each (tuples -> lists)


def _samples(rows: list[Row], ids: list[int], worker: int, skip: int) -> Iterator[dict[str, Any]]:
    """A worker's decoded samples as `cursor_stage` + `decode_stage` yield them: skip counts and ignored members
    ride on the next sample, those after the last one on an `_empty` sample."""
    pending: Counter[str] = Counter()
    ignored: Counter[str] = Counter()
    for count, i in enumerate(ids, start=1):
        if count <= skip:
            continue
        sample, reason, members = rows[i]
        ignored.update(members)
        if sample is None:
            pending[reason] += 1
            continue
        sample = {**sample, "_cursor": (worker, count)}
        if pending:
            sample["_skipped"], pending = dict(pending), Counter()
        if ignored:
            sample["_ignored"], ignored = dict(ignored), Counter()
        yield sample
    if pending or ignored:
        yield {"_skipped": dict(pending), "_ignored": dict(ignored), "_empty": True}


def _batched(samples: Iterator[dict[str, Any]], size: int, collate: Collator, drop_last: bool
             ) -> Iterator[dict[str, Any]]:
    """`wds.batched(size, collate, partial=not drop_last)`."""
    group: list[dict[str, Any]] = []
    for sample in samples:
        group.append(sample)
        if len(group) == size:
            yield collate(group)
            group = []
    if group and not drop_last:
        yield collate(group)


def _round_robin(streams: list[Iterator[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    """Batches of each worker in turn, an exhausted worker left out: the order in which a `DataLoader` over an
    iterable dataset returns its workers' batches."""
    active = list(streams)
    while active:
        for stream in list(active):
            try:
                yield next(stream)
            except StopIteration:
                active.remove(stream)
