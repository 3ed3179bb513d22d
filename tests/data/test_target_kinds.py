"""A kind of supervision is one registered `TargetKind`: a kind defined here shards, loads and shows in records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mmfuse.data.info import DatasetInfo
from mmfuse.data.loader import make_loader, read_records
from mmfuse.data.manifest import ShardConfig
from mmfuse.data.shard import write_shards
from mmfuse.data.targets import KINDS, TARGET_KINDS, TargetKind, kind_names, register_kind
from mmfuse.encoders import create_encoder
from mmfuse.errors import DataError, FieldError


class Stars(TargetKind):
    """A 1-5 star rating per record: the `--label` column, shard member `.stars`, batch entry `stars` (B,) int64."""

    name = "stars"
    entry = "stars"

    def columns(self, config) -> list[tuple[str, str]]:
        return [("--label", config.label)]

    def parse(self, row: dict[str, Any], config, vocabulary) -> int:
        value = row.get(config.label)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
            raise FieldError(config.label, f"not a star rating: {value!r}")
        return value

    def encode(self, cell: int, index: dict[str, int]) -> dict[str, str]:
        return {"stars": str(cell)}

    def describe(self, config, vocabulary, accepted) -> dict[str, Any]:
        return {"label_field": "stars", "labels": [], "scale": 5}

    def check(self, file: Path, info) -> None:
        if info.meta.get("scale") != 5:
            raise DataError(f"{file}: a stars dataset needs 'scale': 5")

    def members(self, info) -> tuple[str, ...]:
        return ("stars",)

    def decode(self, raw: dict[str, Any], info) -> dict[str, Any]:
        if "stars" not in raw:
            raise FieldError("stars", "no '.stars' member")
        return {"stars": int(raw["stars"])}

    def collate(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values)

    def record(self, raw: dict[str, Any], info) -> dict[str, Any]:
        return {"stars": int(raw["stars"])} if "stars" in raw else {}


@pytest.fixture
def stars():
    register_kind(Stars)
    yield
    del TARGET_KINDS["stars"]


@pytest.fixture
def manifest(tmp_path) -> Path:
    rows = [{"key": f"item-{i:02d}", "text": f"a thing numbered {i}", "label": 1 + i % 5} for i in range(12)]
    rows.append({"key": "bad", "text": "an unrated thing", "label": "many"})
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_kind_registered_here_shards_loads_and_shows_in_records(stars, manifest, tmp_path):
    assert "stars" in kind_names() and "stars" not in KINDS  # KINDS: the built-in kinds
    out = tmp_path / "shards"
    report = write_shards(ShardConfig(manifest=str(manifest), out=str(out), image=None, audio=None, task="stars",
                                      split=None, fractions={"train": 1.0}, progress=False))
    assert report.counts == {"train": 12} and report.reasons == {"label: not a star rating": 1}
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["format"] == "mmfuse-shards/1" and meta["task"] == "stars" and meta["scale"] == 5

    info = DatasetInfo.load(out)
    batches = list(make_loader(info, "train", {"text": create_encoder("tiny-text").preprocessor}, 5))
    stars_by_key = {k: int(s) for b in batches for k, s in zip(b["key"], b["stars"], strict=True)}
    assert batches[0]["stars"].dtype == torch.int64 and "label" not in batches[0]
    assert stars_by_key == {f"item-{i:02d}": 1 + i % 5 for i in range(12)}
    assert {r["key"]: r["stars"] for r in read_records(info, "train")} == stars_by_key

    meta.pop("scale")  # the kind's own dataset.json field, checked by the kind
    (out / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="a stars dataset needs 'scale': 5"):
        DatasetInfo.load(out)


def test_an_unknown_kind_is_refused_naming_the_registered_ones(manifest, tmp_path):
    with pytest.raises(DataError, match="task must be one of classification, multilabel, regression, interactions, "
                                        "none, got 'stars'"):
        ShardConfig(manifest=str(manifest), out=str(tmp_path / "x"), task="stars")
