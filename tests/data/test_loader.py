from __future__ import annotations

import json
import tarfile

import pytest
import torch
from helpers import keys, write_tar

from mmfuse.data.info import DatasetInfo
from mmfuse.data.loader import make_loader
from mmfuse.errors import DataError


def test_every_sample_once_per_epoch_seeded_and_reshuffled(demo_shards, preprocessors):
    info = DatasetInfo.load(demo_shards)
    run = lambda epoch, seed=0: keys(make_loader(info, "train", preprocessors, 10, shuffle=True,  # noqa: E731
                                                 seed=seed, epoch=epoch, shuffle_buffer=50))
    first = run(1)
    assert sorted(first) == sorted(set(first)) and len(first) == 96
    assert run(1) == first  # same seed and epoch: same order
    assert run(2) != first and sorted(run(2)) == sorted(first)  # a new epoch reshuffles
    assert run(1, seed=1) != first


def test_two_workers_still_cover_every_sample_once(demo_shards, preprocessors):
    info = DatasetInfo.load(demo_shards)
    got = keys(make_loader(info, "train", preprocessors, 16, num_workers=2, shuffle=True))
    assert sorted(got) == sorted(set(got)) and len(got) == 96


def test_batch_layout(demo_shards, preprocessors):
    info = DatasetInfo.load(demo_shards)
    batch = next(iter(make_loader(info, "val", preprocessors, 8)))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["text_ids"].shape == batch["text_mask"].shape and batch["text_ids"].shape[0] == 8
    assert batch["text_mask"][:, -1].any() and not batch["text_mask"].all()  # padded to the longest only
    assert batch["label"].dtype == torch.long and batch["present_text"].all()
    assert batch["skipped"] == {}


@pytest.fixture
def broken_shards(demo_shards, tmp_path):
    """One good sample, one truncated image, one bad label, one without text, one pickle member."""
    good = next(iter(tarfile.open(DatasetInfo.load(demo_shards).shard_urls("val")[0])))
    jpg = tarfile.open(DatasetInfo.load(demo_shards).shard_urls("val")[0]).extractfile(
        good.name.rsplit(".", 1)[0] + ".jpg").read()
    write_tar(tmp_path / "bad-000000.tar", [
        ("ok", {"txt": b"an oak toy", "jpg": jpg, "cls": b"0"}),
        ("truncated", {"txt": b"a steel toy", "jpg": jpg[: len(jpg) // 3], "cls": b"1"}),
        ("badlabel", {"txt": b"a steel toy", "jpg": jpg, "cls": b"17"}),
        ("notext", {"jpg": jpg, "cls": b"2", "pyd": b"\x80\x04K\x01."}),
    ])
    meta = {"modalities": {"text": ["txt"], "image": ["jpg"]}, "labels": ["a", "b", "c"],
            "splits": {"val": {"count": 4, "shards": [{"path": "bad-000000.tar", "count": 4}]}}}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    return DatasetInfo.load(tmp_path)


def test_bad_samples_are_skipped_and_counted(broken_shards, preprocessors):
    batches = list(make_loader(broken_shards, "val", preprocessors, 8))
    assert keys(batches) == ["ok", "notext"]
    skipped = {}
    for b in batches:
        for reason, n in b["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    assert skipped == {"image: cannot decode": 1, "label: index 17 outside the 3 labels": 1}
    assert batches[0]["present_text"].tolist() == [True, False]


def test_strict_names_shard_key_and_field(broken_shards, preprocessors):
    with pytest.raises(DataError, match=r"bad-000000.tar: sample 'truncated': image: cannot decode"):
        list(make_loader(broken_shards, "val", preprocessors, 8, strict=True))


def test_missing_dataset_json_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="dataset.json not found"):
        DatasetInfo.load(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        DatasetInfo.load(tmp_path / "nowhere")
