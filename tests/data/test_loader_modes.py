"""Loader modes: shards from other tools, pickle members, resampled epochs, ranks x workers coverage."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from helpers import keys, write_tar

from mmfuse.cli import main
from mmfuse.data.info import DatasetInfo
from mmfuse.data.loader import make_loader, read_records
from mmfuse.errors import DataError


class _Payload:
    """Unpickling this creates `path`: the side effect a malicious `.pyd` / `.pickle` member would have."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.fixture
def foreign(demo_shards, tmp_path) -> tuple[Path, Path]:
    """Two shards 'from another tool': label names in `.label`, `.caption` text, `.jpeg` images, pickle members."""
    records = list(read_records(DatasetInfo.load(demo_shards), "val"))[:12]
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    (tmp_path / "other").mkdir()
    for part in range(2):
        write_tar(tmp_path / "other" / f"part-{part}.tar", [
            (f"{part}-{i}", {"caption": r["text"].encode(), "jpeg": r["image"], "label": r["label"].encode(),
                             **({"pyd": payload, "pickle": payload} if i == 0 else {})})
            for i, r in enumerate(records[part * 6:(part + 1) * 6])])
    return tmp_path, marker


def test_from_shards_with_a_mapping_and_pickle_never_decoded(foreign, preprocessors, capsys):
    root, marker = foreign
    out = root / "described"
    assert main(["shard", "--from-shards", f"train={root}/other/part-*.tar", "--from-shards",
                 f"test={root}/other/part-1.tar", "--map", "caption=text,jpeg=image", "--label-field", "label",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "described train 12, test 6 samples" in printed
    assert "pickle member .pyd (ignored, never decoded) x3" in printed
    info = DatasetInfo.load(out, verify=True)
    assert info.label_encoding == "name" and info.modalities == {"text": ["caption"], "image": ["jpeg"]}
    with pytest.warns(UserWarning, match=r"part-0.tar: sample '0-0' has member\(s\) .pickle, .pyd that would need"):
        batches = list(make_loader(info, "train", preprocessors, 5))
    assert sorted(keys(batches)) == sorted(f"{p}-{i}" for p in range(2) for i in range(6))
    ignored = {}
    for b in batches:
        assert b["skipped"] == {}
        for k, n in b["ignored"].items():
            ignored[k] = ignored.get(k, 0) + n
    assert ignored == {"pickle member .pickle": 2, "pickle member .pyd": 2}
    assert batches[0]["present_image"].all() and batches[0]["present_text"].all()
    assert not marker.exists()  # nothing was unpickled
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload is live: unpickling it does create the file
    assert marker.exists()


def test_from_shards_refuses_unknown_labels_and_bad_mappings(foreign):
    root, _ = foreign
    shards = f"{root}/other/part-*.tar"
    with pytest.raises(DataError, match="labels not in --labels"):
        from mmfuse.data.foreign import index_shards

        index_shards([shards], {"caption": "text"}, root / "x", label_field="label", labels=["circle-wood"])
    assert main(["shard", "--from-shards", shards, "--map", "caption=video", "--out", str(root / "y")]) == 2
    assert main(["shard", "--from-shards", f"{root}/no-*.tar", "--map", "caption=text", "--out", str(root / "z")]) == 2
    assert main(["shard", "--from-shards", shards, "--map", "pyd=text", "--out", str(root / "z")]) == 2


def test_resampled_mode_has_a_fixed_epoch_length(demo_shards, preprocessors):
    info = DatasetInfo.load(demo_shards)
    run = lambda workers, epoch=1: keys(make_loader(  # noqa: E731
        info, "train", preprocessors, 8, resampled=True, epoch_samples=50, num_workers=workers, epoch=epoch))
    first = run(0)
    assert len(first) == 50 and set(first) <= {r["key"] for r in read_records(info, "train")}
    assert run(0) == first and run(0, epoch=2) != first  # seeded per epoch
    assert len(run(2)) == 50  # shared between the workers, not 50 each


def test_every_sample_once_across_two_ranks_and_two_workers(demo_shards, preprocessors, monkeypatch):
    info = DatasetInfo.load(demo_shards)
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen += keys(make_loader(info, "train", preprocessors, 8, num_workers=2, shuffle=True, seed=3))
    assert len(seen) == info.count("train") == len(set(seen))


def test_dataset_json_from_the_demo_records_shard_sizes(demo_shards):
    meta = json.loads((demo_shards / "dataset.json").read_text())
    shard = meta["splits"]["train"]["shards"][0]
    assert shard["bytes"] == (demo_shards / shard["path"]).stat().st_size


def test_closing_summary_names_skips_and_ignored_members():
    from collections import Counter

    from mmfuse.train.coverage import data_summary

    assert data_summary(Counter(), Counter()) == "mmfuse: skipped 0 samples"
    assert data_summary(Counter({"image: cannot decode": 2, "label: missing": 1}), Counter({"pickle member .pyd": 1})) \
        == "mmfuse: skipped 3 samples: image: cannot decode x2, label: missing x1; ignored shard members: " \
           "pickle member .pyd x1"
