from __future__ import annotations

import json

from mmfuse.data.demo import LABELS, MATERIALS, SHAPES, DemoSpec, build_demo, demo_dataset
from mmfuse.data.info import DatasetInfo
from mmfuse.data.loader import read_records


def test_dataset_json_describes_the_shards(demo_shards):
    info = DatasetInfo.load(demo_shards)
    assert info.labels == list(LABELS) and len(LABELS) == 6
    assert {s: info.count(s) for s in info.splits} == {"train": 96, "val": 32, "test": 40}
    assert [len(info.shard_urls(s)) for s in ("train", "val", "test")] == [3, 1, 2]
    for split in info.splits:
        assert sum(sh["count"] for sh in info.splits[split]["shards"]) == info.count(split)


def test_each_modality_carries_only_part_of_the_label(demo_shards):
    """Text names the material (never the shape); the label is the (shape, material) pair."""
    info = DatasetInfo.load(demo_shards)
    records = list(read_records(info, "train"))
    assert len({r["key"] for r in records}) == 96
    for r in records:
        shape, material = r["label"].split("-")
        words = set(r["text"].replace(",", " ").replace(";", " ").split())
        assert words & set(MATERIALS[material]), r
        assert not words & set(SHAPES), r
        assert not any(words & set(syn) for other, syn in MATERIALS.items() if other != material), r
    assert sum("audio" not in r for r in records) > 0  # some clips are missing by design


def test_generation_is_seeded(tmp_path):
    spec = DemoSpec(train=8, val=4, test=4, shard_size=4, image_size=16)
    a = json.loads((build_demo(tmp_path / "a", spec) / "dataset.json").read_text())
    b = json.loads((build_demo(tmp_path / "b", spec) / "dataset.json").read_text())
    c = json.loads((build_demo(tmp_path / "c", DemoSpec(**{**spec.__dict__, "seed": 1})) / "dataset.json").read_text())
    sums = lambda meta: [s["sha256"] for split in meta["splits"].values() for s in split["shards"]]  # noqa: E731
    assert sums(a) == sums(b)
    assert sums(a) != sums(c)


def test_demo_dataset_is_cached(tmp_path):
    spec = DemoSpec(train=4, val=4, test=4, shard_size=4, image_size=16)
    first = demo_dataset(spec, root=tmp_path)
    stamp = (first / "dataset.json").stat().st_mtime_ns
    assert demo_dataset(spec, root=tmp_path) == first
    assert (first / "dataset.json").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary dir left behind
