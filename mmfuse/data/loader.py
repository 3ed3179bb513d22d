"""The sharded loader: a `webdataset` pipeline of small stages (shards -> samples -> decoded -> batches).

Nothing is ever unpickled: samples are read as raw bytes and only the members a modality maps to are decoded,
by the encoders' own preprocessors. A member that would need pickle (`.pyd`, `.pickle`, `.pth`, ...) is counted
and ignored (`batch["ignored"]`), never decoded. A sample that fails to decode, is over a resource limit
(`mmfuse.limits`: image pixels, tar member bytes) or holds a member over the limit is skipped and counted per
reason; the counts travel inside the batches (`batch["skipped"]`) so they survive loader worker processes. A loader
worker process that dies is a one-line `DataError`, not a traceback.

Two shard orders: one pass over every shard (split between ranks and workers, optionally shuffled), or
`resampled`: shards drawn with replacement, seeded per rank and worker, for a fixed `epoch_samples`.
"""

from __future__ import annotations

import functools
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
import webdataset as wds

from ..encoders.base import Preprocessor
from ..errors import DataError, FieldError
from ..limits import LimitExceeded, too_large
from .augment import ImageAugment
from .batch import Collator
from .cached import KeyLookup, indexed_samples
from .info import PICKLE_EXTENSIONS, DatasetInfo
from .position import LoaderPosition, cursor_stage, split_by_worker_rotated
from .targets import decode_target, get_kind, supervision_members
from .tario import tar_samples


def _member(raw: dict[str, Any], extensions: list[str]) -> Any:
    for ext in extensions:
        if ext in raw:
            return raw[ext]
    return None


def decode_sample(raw: dict[str, Any], info: DatasetInfo, preprocessors: Mapping[str, Preprocessor],
                  target: str | None = None, lookups: Mapping[str, KeyLookup] | None = None,
                  augment: Mapping[str, ImageAugment] | None = None) -> dict:
    """Raw tar members of one sample -> {'key', 'label' / 'target' (see `mmfuse.data.targets`), <modality>:
    transformed value or None}. `target` is the kind of supervision to decode (default: the dataset's task). A
    modality in `lookups` is not decoded: its value is `lookups[m].lookup(key)` (True, or None when absent). A
    modality in `augment` is transformed with `augment[m]` bound to the sample's key (`mmfuse.data.augment`)."""
    sample: dict[str, Any] = {"key": raw["__key__"], "_cursor": (raw.get("__worker__", 0), raw.get("__cursor__", 0))}
    sample.update(decode_target(target or info.task, raw, info))
    lookups, augment = lookups or {}, augment or {}
    for m, pre in preprocessors.items():
        value = _member(raw, info.modalities[m])
        try:
            if m in lookups:
                sample[m] = lookups[m].lookup(sample["key"])
            elif m in augment:
                sample[m] = pre.transform(value, augment=functools.partial(augment[m], key=sample["key"]))
            else:
                sample[m] = pre.transform(value)
        except LimitExceeded as err:
            raise FieldError(m, str(err)) from None
        except Exception as err:  # noqa: BLE001 - any decoder failure is a data problem of this field
            raise FieldError(m, f"cannot decode ({type(err).__name__}: {str(err).splitlines()[0][:80]})") from None
        value = sample[m][0] if isinstance(sample[m], tuple) else sample[m]  # (features, real frames)
        # one float64 sum: NaN/Inf in any element makes it non-finite, finite float32 values cannot overflow it;
        # far cheaper per sample than isfinite().all() (benchmarks/README.md, "Safe decoding")
        if isinstance(value, torch.Tensor) and value.is_floating_point() and \
                not bool(torch.isfinite(value.sum(dtype=torch.float64))):
            raise FieldError(m, "non-finite values (NaN or Inf)")
    return sample


def oversize_field(raw: dict[str, Any], info: DatasetInfo, read: Iterable[str]) -> FieldError | None:
    """The first member of `raw` over the size limit (`raw['__oversize__']`, see `tario`) among those of the
    modalities `read` and the supervision members, as a `FieldError`; None if there is none."""
    for ext, size in raw.get("__oversize__", {}).items():
        modality = next((m for m in read if ext in info.modalities.get(m, ())), None)
        if modality is not None or ext in supervision_members(info):
            return FieldError(modality or f".{ext}", f"tar member {too_large(size)}")
    return None


def decode_stage(info: DatasetInfo, preprocessors: Mapping[str, Preprocessor], strict: bool = False,
                 target: str | None = None, shard_errors: _ShardErrorHandler | None = None,
                 lookups: Mapping[str, KeyLookup] | None = None, augment: Mapping[str, ImageAugment] | None = None):
    """A pipeline stage: raw samples -> decoded samples (`decode_sample`); failures counted (or raised when
    `strict`), with the unreadable shard data `shard_errors` counted."""

    def stage(source: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        pending: Counter[str] = Counter()
        ignored: Counter[str] = Counter()
        warned: set[str] = set()
        for raw in source:
            if shard_errors is not None:
                pending.update(shard_errors.drain())
            sample = decode_counted(raw, info, preprocessors, strict, target, lookups, ignored, warned, augment)
            if isinstance(sample, str):
                pending[sample] += 1
                continue
            if pending:
                sample["_skipped"], pending = dict(pending), Counter()
            if ignored:
                sample["_ignored"], ignored = dict(ignored), Counter()
            yield sample
        if shard_errors is not None:
            pending.update(shard_errors.drain())
        if pending or ignored:  # failures after the last good sample still reach the counts
            yield {"_skipped": dict(pending), "_ignored": dict(ignored), "_empty": True}

    return stage


def decode_counted(raw: dict[str, Any], info: DatasetInfo, preprocessors: Mapping[str, Preprocessor], strict: bool,
                   target: str | None, lookups: Mapping[str, KeyLookup] | None, ignored: Counter[str],
                   warned: set[str], augment: Mapping[str, ImageAugment] | None = None) -> dict[str, Any] | str:
    """One raw sample -> its decoded sample (`decode_sample`), or the reason it is skipped (a `DataError` when
    `strict`). The members it ignores (pickle, oversize) are added to `ignored`; a shard's first pickle member is
    warned about once (`warned`: the shards already warned about)."""
    unsafe = sorted(ext for ext in raw if ext in PICKLE_EXTENSIONS)
    if unsafe:
        if raw.get("__url__") not in warned:  # once per shard
            warned.add(raw.get("__url__"))
            warnings.warn(f"mmfuse: {raw.get('__url__')}: sample '{raw.get('__key__')}' has member(s) "
                          f"{', '.join('.' + e for e in unsafe)} that would need pickle: ignored, never "
                          f"decoded (counted in batch['ignored'])", stacklevel=3)
        ignored.update(f"pickle member .{ext}" for ext in unsafe)
    try:
        oversize = oversize_field(raw, info, preprocessors)
        if oversize is not None:
            raise oversize
        ignored.update(f"oversize member .{ext}" for ext in raw.get("__oversize__", {}))
        return decode_sample(raw, info, preprocessors, target, lookups, augment)
    except FieldError as err:
        if strict:
            raise DataError(f"{raw.get('__url__')}: sample '{raw.get('__key__')}': {err}") from None
        return f"{err.field}: {err.reason.split(' (')[0]}"


SHARD_REASON = "shard: "
"""Prefix of the skip reasons that count unreadable shard data (once per damaged shard), not samples."""
_SHARD_REASONS = (("cut short", "truncated (a member is cut short)"), ("truncated header", "truncated"),
                  ("empty file", "empty file"), ("checksum", "not a tar file, or damaged"),
                  ("bad size field", "damaged header"), ("two '.", "a sample repeats a member"))


def shard_reason(exn: Exception) -> str:
    """The counted reason of an unreadable-shard error: 'shard: truncated', 'shard: unreadable file', ..."""
    text = str(exn)
    reason = next((r for needle, r in _SHARD_REASONS if needle in text), None)
    if reason is None:
        reason = "unreadable file" if isinstance(exn, OSError) else f"unreadable ({type(exn).__name__})"
    return SHARD_REASON + reason


def sample_skips(skipped: Mapping[str, int]) -> int:
    """Samples skipped, out of counts that may also hold unreadable-shard reasons (counted per shard)."""
    return sum(n for reason, n in skipped.items() if not reason.startswith(SHARD_REASON))


class _ShardErrorHandler:
    """webdataset handler for unreadable tar data: raise when strict, else warn, count per reason (`drain`, read by
    the decode stage into the batches' `skipped`) and continue."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.counts: Counter[str] = Counter()

    def __call__(self, exn: Exception) -> bool:
        if self.strict:
            raise DataError(f"unreadable shard: {exn}") from None
        warnings.warn(f"mmfuse: skipping unreadable shard data: {exn}", stacklevel=2)
        self.counts[shard_reason(exn)] += 1
        return True

    def drain(self) -> Counter[str]:
        counts, self.counts = self.counts, Counter()
        return counts


def epoch_limit(total: int) -> Callable[[Iterator[dict[str, Any]]], Iterator[dict[str, Any]]]:
    """A pipeline stage that passes `total` decoded samples in all, shared between every rank and loader worker."""

    def stage(source: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        parts, part = world * workers, rank * workers + worker
        quota = total // parts + (1 if part < total % parts else 0)
        if quota == 0:
            return
        for sample in source:
            yield sample
            quota -= not sample.get("_empty")
            if quota == 0:
                return

    return stage


def build_pipeline(info: DatasetInfo, split: str, preprocessors: Mapping[str, Preprocessor], batch_size: int, *,
                   shuffle: bool = False, seed: int = 0, epoch: int = 0, shuffle_buffer: int = 1000,
                   strict: bool = False, drop_last: bool = False, resampled: bool = False,
                   epoch_samples: int | None = None, position: LoaderPosition | None = None,
                   lookups: Mapping[str, KeyLookup] | None = None,
                   index: dict[str, list[dict[str, Any]]] | None = None, every_rank: bool = False,
                   target: str | None = None, augment: Mapping[str, ImageAugment] | None = None) -> wds.DataPipeline:
    """The webdataset pipeline for one epoch of `split`; seeded so the same (seed, epoch) gives the same order.

    With `resampled`, shards are drawn with replacement (seeded per rank and worker) and the epoch ends after
    `epoch_samples` samples in all (default: the split's count). `position` (from batches' `cursor` entries)
    resumes an epoch where an earlier run of the same pipeline stopped. `lookups` ({modality: `KeyLookup`}, from a
    feature cache) look those modalities' presence up by sample key instead of decoding them: their batch entries
    are only `present_<m>`. `index` (`index_split`) replaces reading the tar files when every modality is looked
    up. Every batch carries `split`. `every_rank` reads the whole split on each rank of a distributed job (instead
    of its own shards). `target` is the supervision decoded into the batches (a kind of `mmfuse.data.targets`;
    default: the dataset's task; 'none' reads unlabelled samples). `augment` ({modality: `ImageAugment`}, training
    batches only) augments those modalities per sample, seeded by sample key (`mmfuse.data.augment`).
    """
    urls = info.shard_urls(split)
    info.require_modalities(list(preprocessors))
    if unread := sorted(set(lookups or ()) - set(preprocessors)):
        raise ValueError(f"lookups for modalities the loader does not read: {unread}")
    if cached := sorted(set(augment or ()) & set(lookups or ())):
        raise ValueError(f"cannot augment modalities served from a feature cache: {cached}")
    if unread := sorted(set(augment or ()) - set(preprocessors)):
        raise ValueError(f"augmentation for modalities the loader does not read: {unread}")
    if resampled:
        stages: list[Any] = [wds.ResampledShards(urls, seed=seed * 1000 + epoch, deterministic=True)]
    else:
        stages = [wds.SimpleShardList(urls)]
        if shuffle:
            stages.append(wds.detshuffle(bufsize=len(urls), initial=len(urls), seed=seed, epoch=epoch - 1))
        rotation = position.next_worker if position else 0
        stages += [*([] if every_rank else [wds.split_by_node]), split_by_worker_rotated(rotation)]
    shard_errors = _ShardErrorHandler(strict)
    stages.append(indexed_samples(index) if index is not None else tar_samples(handler=shard_errors))
    if shuffle:
        stages.append(wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100), seed=seed * 1000 + epoch))
    stages += [cursor_stage(position),
               decode_stage(info, preprocessors, strict, target, shard_errors, lookups, augment)]
    if resampled:
        stages.append(epoch_limit(epoch_samples if epoch_samples is not None else info.count(split)))
    collate = Collator(preprocessors, looked_up=list(lookups or ()), split=split)
    stages.append(wds.batched(batch_size, collation_fn=collate, partial=not drop_last))
    return wds.DataPipeline(*stages)


def make_loader(info: DatasetInfo, split: str, preprocessors: Mapping[str, Preprocessor], batch_size: int, *,
                num_workers: int = 0, pin_memory: bool = False, **pipeline_kwargs: Any) -> torch.utils.data.DataLoader:
    """A `DataLoader` over `build_pipeline(...)`; workers are capped at the number of shards (unless resampled).

    `memory` (a `mmfuse.data.memory.MemorySplit` of this split, every modality looked up) replaces the pipeline by
    in-memory batches in the same order, unless `resampled`: no worker processes, no pinning. A memory split has
    nothing to augment (every modality is cached): `augment` there is an error."""
    memory = pipeline_kwargs.pop("memory", None)
    resampled = pipeline_kwargs.get("resampled", False)
    if memory is not None and not resampled:  # a fully cached split: its samples in memory, in this order
        if pipeline_kwargs.pop("augment", None):
            raise ValueError("cannot augment a split served from the feature cache in memory")
        return memory.loader(preprocessors, batch_size, num_workers=num_workers, **pipeline_kwargs)
    pipeline = build_pipeline(info, split, preprocessors, batch_size, **pipeline_kwargs)
    workers = num_workers if resampled else min(num_workers, len(info.shard_urls(split)))
    # A private generator: creating the iterator must not draw from the global RNG, or resuming mid-epoch would
    # shift every later dropout mask.
    loader = _Loader(pipeline, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                     persistent_workers=False, generator=torch.Generator())
    loader.where = f"{info.root} split '{split}'"
    return loader


class _Loader(torch.utils.data.DataLoader):
    """A `DataLoader` whose dead worker process is a one-line `DataError` naming the split, not a traceback."""

    where = ""

    def __iter__(self) -> Iterator[Any]:
        return _reporting_death(super().__iter__(), self.where)


def _reporting_death(batches: Iterator[Any], where: str) -> Iterator[Any]:
    try:
        yield from batches
    except RuntimeError as err:
        if "DataLoader worker" not in str(err):
            raise
        raise DataError(f"{where}: a loader worker process died ({str(err).splitlines()[0].strip()[:160]}); rerun "
                        f"with 0 loader workers to find the sample") from None


def read_records(info: DatasetInfo, split: str, handler: Callable[[Exception], bool] = wds.reraise_exception
                 ) -> Iterator[dict[str, Any]]:
    """The raw records of `split` in shard order, as plain Python values for `Predictor.predict`:
    {'key', 'label' (name; a list of names for multilabel) or 'target' ({name: value}), <modality>: str for text,
    bytes for media, or absent; '_refused': '<field>: <reason>' when a member is over the size limit}. Unreadable
    shard data goes to `handler` (default: raised)."""
    source = wds.DataPipeline(wds.SimpleShardList(info.shard_urls(split)), tar_samples(handler))
    kind = get_kind(info.task)
    for raw in source:
        record: dict[str, Any] = {"key": raw["__key__"], **kind.record(raw, info)}
        for m, extensions in info.modalities.items():
            value = _member(raw, extensions)
            if value is not None:
                record[m] = value.decode("utf-8") if m == "text" else value
        oversize = oversize_field(raw, info, info.modalities)
        if oversize is not None:
            record["_refused"] = f"{oversize.field}: {oversize.reason}"
        yield record
