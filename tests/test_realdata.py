"""benchmarks/realdata.py: the digit-match task on real handwritten digits (scikit-learn's, shipped offline)."""

from __future__ import annotations

import importlib.util
import json
import re
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mmfuse.data.info import DatasetInfo

pytest.importorskip("sklearn")
ROOT = Path(__file__).parent.parent


def realdata():
    spec = importlib.util.spec_from_file_location("realdata", ROOT / "benchmarks" / "realdata.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def value(caption: str, words: tuple[str, ...]) -> int:
    """The number an English caption names (the inverse of `number_phrase`)."""
    n = {w: i for i, w in enumerate(words)}
    phrase = re.sub(r"^(a handwritten|the digit|this scan shows|someone wrote|it reads|a picture of|the answer is) ",
                    "", caption)
    if m := re.fullmatch(r"the number (\d)", phrase):
        return int(m[1])
    if m := re.fullmatch(r"(\w+) plus (\w+)", phrase):
        return n[m[1]] + n[m[2]]
    if m := re.fullmatch(r"(\w+) minus (\w+)", phrase):
        return n[m[1]] - n[m[2]]
    if m := re.fullmatch(r"one (less|more) than (\w+)", phrase):
        return n[m[2]] + (1 if m[1] == "more" else -1)
    if m := re.fullmatch(r"half of (\w+)", phrase):
        return n[m[1]] // 2
    if m := re.fullmatch(r"twice (\w+)", phrase):
        return 2 * n[m[1]]
    return n[phrase]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    module = realdata()
    out = tmp_path_factory.mktemp("digits")
    return module, out, module.build_digit_match(out, seed=3, limit=90)


def test_digit_match_shards_without_rejects_split_by_image_and_balanced(built):
    module, out, shards = built
    assert shards == out / "shards" and (shards / "rejects.jsonl").read_text() == ""
    rows = [json.loads(line) for line in (out / "manifest" / "items.jsonl").read_text().splitlines()]
    assert len(rows) == 180  # two captions per image
    images = {s: {r["image_id"] for r in rows if r["split"] == s} for s in ("train", "val", "test")}
    assert all(images.values()) and not (images["train"] & images["val"] or images["train"] & images["test"]
                                         or images["val"] & images["test"])
    info = DatasetInfo.load(shards)
    for split in ("train", "val", "test"):
        labels = Counter(r["label"] for r in rows if r["split"] == split)
        assert labels["match"] == labels["no-match"] == len(images[split]) == info.count(split) // 2
    meta = json.loads((shards / "dataset.json").read_text())
    assert meta["labels"] == ["match", "no-match"] and set(meta["modalities"]) == {"text", "image"}
    assert meta["formats"] == {"text": {"txt": 180}, "image": {"png": 180}}  # both modalities in every sample
    for row in rows:  # each caption names the digit its label says
        named = value(row["caption"], module.WORDS)
        assert named == row["named"] and (named == row["digit"]) == (row["label"] == "match"), row
    with tarfile.open(next(shards.glob("train-*.tar"))) as tar:
        png = next(m for m in tar.getmembers() if m.name.endswith(".png"))
        from PIL import Image

        image = Image.open(tar.extractfile(png))
        assert image.size == (64, 64) and np.asarray(image).std() > 0


def test_digit_match_is_deterministic_and_reused(built, tmp_path):
    module, out, shards = built
    again = module.build_digit_match(tmp_path / "again", seed=3, limit=90)
    assert (tmp_path / "again" / "manifest" / "items.jsonl").read_bytes() == \
        (out / "manifest" / "items.jsonl").read_bytes()
    assert [DatasetInfo.load(again).count(s) for s in ("train", "val", "test")] == \
        [DatasetInfo.load(shards).count(s) for s in ("train", "val", "test")]
    assert module.build_digit_match(out, seed=3, limit=90) == shards  # the earlier build, reused
    other = module.write_manifest(tmp_path / "other", seed=4, limit=90)
    assert other.read_bytes() != (out / "manifest" / "items.jsonl").read_bytes()


def test_full_split_sizes_and_cli(tmp_path, capsys):
    module = realdata()
    sizes = {s: len(ix) for s, ix in module.split_images(1797, seed=0).items()}
    assert sizes == {"train": 1050, "val": 373, "test": 374}  # 2,100 train pairs
    assert module.main(["--out", str(tmp_path / "cli"), "--limit", "12"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli" / "shards")
    assert DatasetInfo.load(tmp_path / "cli" / "shards").count("train") > 0


def test_digit_match_trains_through_the_cli(built, tmp_path):
    """The shards feed `mmfuse finetune` as they are: both modalities decoded, two labels, nothing skipped."""
    from mmfuse.cli import main

    _, _, shards = built
    run = tmp_path / "run"
    assert main(["finetune", "--data", str(shards), "--out", str(run), "--epochs", "1", "--max-steps", "2",
                 "--batch-size", "16", "--no-progress", "--modalities", "text,image",
                 "--set", "model.encoders.image.kwargs={width: 16, layers: 1, heads: 2, image_size: 32}"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["modalities"] == ["text", "image"] and metrics["skipped_total"] == 0
    assert metrics["test"]["count"] == DatasetInfo.load(shards).count("test")
    saved = json.loads((run / "checkpoints" / "best" / "config.json").read_text())["model"]
    assert saved["labels"] == ["match", "no-match"]
