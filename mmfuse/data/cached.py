"""The loader's side of the frozen-feature cache: a cached modality is looked up by key instead of decoded, and,
when every modality of the model is cached, the tar files are not read at all.

`KeyLookup` is the loader stage of one cached modality in one split (`build_pipeline(..., lookups={m: ...})`,
built by `FeatureCache.source` in mmfuse.train.feature_cache): the pipeline calls `lookup(key)` instead of the
encoder's `transform`, so a cached image is never read as JPEG again, and the batch carries only `present_<m>` for
it (the cached features themselves come from the model's `CachedEncoder`, by `split` and `key`). A key the cache does
not hold (its media failed to decode when the cache was built) fails here, and the sample is skipped and counted
under the same reason as without the cache.

`index_split` records what of each raw sample the pipeline needs besides media (key, label / target members,
names of pickle members), shard by shard; `indexed_samples` replays it in place of reading the tars, so shuffling,
resume positions, skip and ignore counts are exactly those of a pass over the tar files. A finetune run replays it
only for resampled epochs: otherwise `mmfuse.data.memory` decodes it once and serves the same batches from memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import webdataset as wds

from .info import PICKLE_EXTENSIONS, DatasetInfo
from .targets import supervision_members
from .tario import tar_samples


class KeyLookup:
    """Presence of one modality per sample key of one split (True: present, False: absent): the loader's stage for
    a modality whose encoder outputs are cached. A plain dict inside, so it pickles to loader workers."""

    def __init__(self, modality: str, present: Mapping[str, bool]) -> None:
        self.modality = modality
        self.present = dict(present)

    def lookup(self, key: str) -> bool | None:
        """True if the sample has this modality, None if not; a key missing from the cache raises KeyError."""
        if key not in self.present:
            raise KeyError(f"sample '{key}' is not in the {self.modality} feature cache")
        return True if self.present[key] else None


def index_split(info: DatasetInfo, split: str) -> dict[str, list[dict[str, Any]]]:
    """Shard url -> its raw samples in tar order, without media: `__key__`, the label member, pickle members, and
    the members over the size limit (`__oversize__`, so a replayed epoch skips what the tar pass skipped)."""
    index: dict[str, list[dict[str, Any]]] = {}
    members = (*sorted(supervision_members(info)), "__oversize__")  # what decoding reads
    for url in info.shard_urls(split):
        index[url] = []
        for raw in wds.DataPipeline(wds.SimpleShardList([url]), tar_samples(handler=wds.warn_and_continue)):
            kept = {"__key__": raw["__key__"], **{ext: b"" for ext in raw if ext in PICKLE_EXTENSIONS}}
            for member in members:
                if member in raw:
                    kept[member] = raw[member]
            index[url].append(kept)
    return index


def indexed_samples(index: dict[str, list[dict[str, Any]]]):
    """A pipeline stage standing in for `tar_samples`: shard urls -> their indexed raw samples."""

    def stage(shards: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for shard in shards:
            url = shard["url"]
            for raw in index[url]:
                yield {**raw, "__url__": url}

    return stage
