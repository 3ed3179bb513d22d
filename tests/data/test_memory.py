"""In-memory epochs of a fully cached split: the very batches of the webdataset replay, resumable, split over ranks."""

from __future__ import annotations

import pytest
import torch

from mmfuse.data.cached import KeyLookup, index_split
from mmfuse.data.info import DatasetInfo
from mmfuse.data.loader import make_loader
from mmfuse.data.memory import MemoryLoader, MemorySplit
from mmfuse.data.position import LoaderPosition


@pytest.fixture(scope="module")
def cached(demo_shards, preprocessors):
    """(info, preprocessors, source kwargs without `memory`, MemorySplit) of the train split; one key absent from
    the image cache (skipped and counted), every third sample without an image."""
    info = DatasetInfo.load(demo_shards)
    index = index_split(info, "train")
    keys = [raw["__key__"] for url in info.shard_urls("train") for raw in index[url]]
    lookups = {"text": KeyLookup("text", dict.fromkeys(keys, True)),
               "image": KeyLookup("image", {k: i % 3 != 0 for i, k in enumerate(keys) if i != 5})}
    return info, preprocessors, {"lookups": lookups, "index": index}, MemorySplit(info, "train", index)


def same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for name, value in x.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, y[name]), name
            else:
                assert value == y[name], name


def both(cached, batch_size: int, **kwargs) -> tuple[list[dict], list[dict]]:
    info, pre, source, memory = cached
    replayed = list(make_loader(info, "train", pre, batch_size, **source, **kwargs))
    loader = make_loader(info, "train", pre, batch_size, **source, memory=memory, **kwargs)
    assert isinstance(loader, MemoryLoader)
    return replayed, list(loader)


@pytest.mark.parametrize("kwargs", [
    {}, {"shuffle": True, "seed": 3, "epoch": 2, "shuffle_buffer": 20},
    {"shuffle": True, "seed": 0, "epoch": 1, "num_workers": 2},
    {"shuffle": True, "seed": 5, "epoch": 4, "num_workers": 3, "shuffle_buffer": 7},
    {"every_rank": True, "drop_last": True}, {"target": "none"},
])
def test_memory_batches_are_the_replayed_pipelines(cached, kwargs):
    replayed, memory = both(cached, 7, **kwargs)
    same_batches(memory, replayed)
    assert sum(len(b["key"]) for b in memory) > 0
    if not kwargs.get("drop_last"):
        assert sum(b["skipped"].get("image: cannot decode", 0) for b in memory) == 1


@pytest.mark.parametrize("workers", [0, 2])
def test_a_position_from_either_path_resumes_the_other(cached, workers):
    """Stop after k batches, record the position as finetune does, resume: the rest of the epoch, exactly."""
    kwargs = {"shuffle": True, "seed": 1, "epoch": 3, "shuffle_buffer": 10, "num_workers": workers}
    full, _ = both(cached, 5, **kwargs)
    for stop in (1, 4, len(full) - 1):
        position = LoaderPosition()
        for batch in full[:stop]:
            if "cursor" in batch:
                position.advance(*batch["cursor"], max(1, workers))
        rest_replayed, rest_memory = both(cached, 5, position=position, **kwargs)
        same_batches(rest_memory, rest_replayed)
        assert [k for b in full[:stop] + rest_memory for k in b["key"]] == [k for b in full for k in b["key"]]


def test_ranks_split_the_samples_as_the_pipeline_does(cached, monkeypatch):
    shares = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        replayed, memory = both(cached, 4, shuffle=True, seed=2, epoch=1)
        same_batches(memory, replayed)
        shares.append([k for b in memory for k in b["key"]])
    info = cached[0]
    assert not set(shares[0]) & set(shares[1])
    assert len(shares[0]) + len(shares[1]) == info.count("train") - 1  # one key is not in the image cache


def test_samples_are_decoded_once_per_split(cached, monkeypatch):
    info, pre, source, _ = cached
    memory = MemorySplit(info, "train", source["index"])
    calls = [0]
    original = source["lookups"]["text"].lookup

    def counting(key):
        calls[0] += 1
        return original(key)

    monkeypatch.setattr(source["lookups"]["text"], "lookup", counting)
    for epoch in (1, 2, 3):
        list(make_loader(info, "train", pre, 8, **source, memory=memory, shuffle=True, epoch=epoch))
    assert calls[0] == info.count("train")  # once per key (text is looked up before image), not once per epoch


def test_a_partly_cached_split_or_a_resampled_epoch_is_not_served_from_memory(cached):
    info, pre, source, memory = cached
    with pytest.raises(ValueError, match="every modality looked up"):
        list(memory.batches(pre, 4, lookups={"image": source["lookups"]["image"]}))
    loader = make_loader(info, "train", pre, 4, **source, memory=memory, resampled=True, epoch_samples=8)
    assert not isinstance(loader, MemoryLoader) and sum(len(b["key"]) for b in loader) == 8
