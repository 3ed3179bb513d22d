"""Multilabel and regression targets from a manifest through shards into batches; bad targets become rejects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmfuse.cli import main
from mmfuse.data.demo_manifest import PRICE_BASE, write_demo_manifest
from mmfuse.data.info import DatasetInfo
from mmfuse.data.loader import make_loader, read_records
from mmfuse.data.manifest import ShardConfig
from mmfuse.data.shard import write_shards
from mmfuse.errors import DataError

ITEMS = 40
TAGS = ["circle", "metal", "square", "triangle", "wood"]


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    """The demo manifest plus rows with bad multilabel / regression targets."""
    manifest = write_demo_manifest(tmp_path_factory.mktemp("catalogue"), ITEMS, seed=2)
    good = json.loads(manifest.read_text().splitlines()[0])
    bad = [
        {**good, "key": "bad-tag", "tags": ["circle", "glass"], "price": 1.0},
        {**good, "key": "bad-tags-type", "tags": 7, "price": 1.0},
        {**good, "key": "bad-price", "price": "cheap"},
        {**good, "key": "bad-nan", "price": "nan"},
        {key: v for key, v in {**good, "key": "no-price"}.items() if key not in ("price", "tags")},
        {**good, "key": "string-tags", "tags": "square|wood", "price": "12.5"},
    ]
    with open(manifest, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in bad))
    return manifest


def rejects(out: Path) -> dict[str, tuple[str, str]]:
    rows = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    return {r["key"]: (r["field"], r["reason"]) for r in rows}


def test_multilabel_shards_carry_label_sets(catalogue, tmp_path, preprocessors):
    out = tmp_path / "ml"
    report = write_shards(ShardConfig(manifest=str(catalogue), out=str(out), text=["title"], task="multilabel",
                                      label="tags", labels=TAGS, progress=False))
    assert rejects(out) == {"bad-tag": ("tags", "unknown label 'glass'"),
                            "bad-tags-type": ("tags", "expected a list or a '|'-separated string, got int"),
                            "no-price": ("tags", "missing label")}
    assert sum(report.counts.values()) == ITEMS + 3  # the good rows, bad-price, bad-nan and string-tags
    info = DatasetInfo.load(out)
    assert info.task == "multilabel" and info.labels == TAGS
    rows = {json.loads(line)["key"]: json.loads(line) for line in catalogue.read_text().splitlines()}
    for split in info.splits:
        for batch in make_loader(info, split, preprocessors, 8):
            assert batch["label"].dtype == torch.float32 and batch["label"].shape[1] == len(TAGS)
            for key, hot in zip(batch["key"], batch["label"], strict=True):
                tags = rows[key]["tags"]
                tags = tags.split("|") if isinstance(tags, str) else tags
                assert [TAGS[i] for i in hot.nonzero().flatten()] == sorted(tags)
        for record in read_records(info, split):
            if record["key"] == "string-tags":
                assert record["label"] == ["square", "wood"]


def test_regression_shards_carry_targets_and_stats(catalogue, tmp_path, preprocessors):
    out = tmp_path / "reg"
    assert main(["shard", "--manifest", str(catalogue), "--out", str(out), "--text", "title", "--task",
                 "regression", "--targets", "price", "--fractions", "train=0.5,val=0.25,test=0.25",
                 "--no-progress"]) == 0
    assert rejects(out) == {"bad-price": ("price", "not a number: 'cheap'"),
                            "bad-nan": ("price", "not a finite number: 'nan'"),
                            "no-price": ("price", "missing target value")}
    info = DatasetInfo.load(out)
    assert info.task == "regression" and info.targets == ["price"] and info.labels == []
    rows = {json.loads(line)["key"]: json.loads(line) for line in catalogue.read_text().splitlines()}
    train = [float(rows[r["key"]]["price"]) for r in read_records(info, "train")]
    mean = sum(train) / len(train)
    assert info.target_stats["mean"][0] == pytest.approx(mean)
    assert info.target_stats["std"][0] == pytest.approx((sum((v - mean) ** 2 for v in train) / len(train)) ** 0.5)
    seen = 0
    for batch in make_loader(info, "val", preprocessors, 8):
        assert batch["target"].shape == (len(batch["key"]), 1) and "label" not in batch
        for key, value in zip(batch["key"], batch["target"][:, 0].tolist(), strict=True):
            assert value == pytest.approx(float(rows[key]["price"]))
            seen += 1
    assert seen == info.count("val")
    assert min(PRICE_BASE.values()) - 5 < mean < max(PRICE_BASE.values()) + 20


def test_unlabelled_shards_and_the_none_target(catalogue, tmp_path, preprocessors):
    out = tmp_path / "none"
    write_shards(ShardConfig(manifest=str(catalogue), out=str(out), text=["title"], task="none", progress=False))
    info = DatasetInfo.load(out)
    assert info.task == "none" and not (out / "rejects.jsonl").read_text()
    batch = next(iter(make_loader(info, "train", preprocessors, 8)))
    assert "label" not in batch and "target" not in batch and batch["present_image"].all()


def test_a_shard_config_needs_targets_for_regression(catalogue, tmp_path):
    with pytest.raises(DataError, match="regression manifest needs --targets"):
        ShardConfig(manifest=str(catalogue), out=str(tmp_path / "x"), task="regression")
    with pytest.raises(DataError, match="task must be one of"):
        ShardConfig(manifest=str(catalogue), out=str(tmp_path / "x"), task="ranking")
