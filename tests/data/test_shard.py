"""`mmfuse shard`: manifest -> checked shards; every fault listed, every accepted field reproduced, changes detected."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf
import torch

from mmfuse.cli import main
from mmfuse.data.demo import LABELS
from mmfuse.data.demo_manifest import FAULTS, write_demo_manifest
from mmfuse.data.info import DatasetInfo
from mmfuse.data.loader import make_loader, read_records
from mmfuse.data.manifest import ShardConfig, hash_split
from mmfuse.data.shard import write_shards
from mmfuse.data.writer import sha256_file
from mmfuse.encoders import create_encoder
from mmfuse.encoders.base import Preprocessor
from mmfuse.errors import DataError

ITEMS = 48


class AudioLength(Preprocessor):
    """A stand-in audio preprocessor: decodes the raw bytes the loader passes through with soundfile."""

    modality = "audio"

    def transform(self, value):
        return None if value is None else len(sf.read(__import__("io").BytesIO(value))[0])

    def collate(self, values):
        return {"audio_frames": torch.tensor([v or 0 for v in values])}


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    return write_demo_manifest(tmp_path_factory.mktemp("catalogue"), ITEMS, seed=1, faults=True)


@pytest.fixture(scope="module")
def shards(catalogue, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "out"
    report = write_shards(ShardConfig(manifest=str(catalogue), out=str(out), text=["title"], labels=list(LABELS),
                                      shard_size=16, progress=False))
    assert report.rejected == len(FAULTS) and sum(report.counts.values()) == ITEMS
    return out


def manifest_rows(catalogue: Path) -> dict[str, dict]:
    rows = {}
    for line in catalogue.read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row["key"], row)  # the first of a duplicated key is the one kept
    return rows


def test_every_fault_is_listed_with_its_reason(shards):
    rejects = [json.loads(line) for line in (shards / "rejects.jsonl").read_text().splitlines()]
    assert {r["key"] for r in rejects} == set(FAULTS)
    for r in rejects:
        field, reason = FAULTS[r["key"]]
        assert r["field"] == field and r["reason"].startswith(reason), r
    duplicate = next(r for r in rejects if r["key"] == "item-000000")
    assert duplicate["reason"] == "duplicate key (first on line 1)" and duplicate["line"] == ITEMS + 6


def test_dataset_json_counts_checksums_and_formats(shards):
    meta = json.loads((shards / "dataset.json").read_text())
    assert meta["labels"] == list(LABELS) and meta["rejected"] == len(FAULTS)
    assert sum(split["count"] for split in meta["splits"].values()) == ITEMS
    for split in meta["splits"].values():
        assert split["count"] == sum(s["count"] for s in split["shards"])
        for shard in split["shards"]:
            assert shard["count"] <= 16 and sha256_file(shards / shard["path"]) == shard["sha256"]
            assert (shards / shard["path"]).stat().st_size == shard["bytes"]
    assert set(meta["modalities"]["image"]) == {"jpg", "png"} and set(meta["modalities"]["audio"]) == {"wav", "flac"}
    assert meta["formats"]["text"]["txt"] == ITEMS and sum(meta["formats"]["image"].values()) == ITEMS


def test_round_trip_reproduces_every_field(shards, catalogue):
    info, rows = DatasetInfo.load(shards, verify=True), manifest_rows(catalogue)
    seen = 0
    for split in info.splits:
        for record in read_records(info, split):
            row, seen = rows[record["key"]], seen + 1
            assert record["text"] == row["title"] and record["label"] == row["label"]
            assert record["image"] == (catalogue.parent / row["image"]).read_bytes()
            if "audio" in row:
                assert record["audio"] == (catalogue.parent / row["audio"]).read_bytes()
            else:
                assert "audio" not in record  # kept, with its audio absent
    assert seen == ITEMS and sum("audio" not in rows[f"item-{i:06d}"] for i in range(ITEMS)) > 0


def test_loader_batches_with_audio_presence(shards, catalogue):
    info, rows = DatasetInfo.load(shards), manifest_rows(catalogue)
    preprocessors = {"text": create_encoder("tiny-text").preprocessor,
                     "image": create_encoder("tiny-image", image_size=32).preprocessor, "audio": AudioLength()}
    batches = list(make_loader(info, "train", preprocessors, 8))
    keys = [k for b in batches for k in b["key"]]
    assert len(keys) == info.count("train") == len(set(keys))
    for b in batches:
        assert b["skipped"] == {} and b["present_text"].all() and b["present_image"].all()
        for key, present, frames in zip(b["key"], b["present_audio"], b["audio_frames"], strict=True):
            assert bool(present) == ("audio" in rows[key]) and (frames > 0) == present
            assert info.labels[int(b["label"][b["key"].index(key)])] == rows[key]["label"]


def test_a_changed_shard_is_detected(shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    shard = copy / json.loads((copy / "dataset.json").read_text())["splits"]["train"]["shards"][0]["path"]
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF  # same size: only the checksum sees it
    shard.write_bytes(bytes(data))
    DatasetInfo.load(copy)
    with pytest.raises(DataError, match=rf"shard {shard} has changed: its sha256 differs"):
        DatasetInfo.load(copy, verify=True)
    shard.write_bytes(bytes(data) + b"\0" * 512)
    with pytest.raises(DataError, match=rf"shard {shard} has changed: {len(data) + 512} bytes"):
        DatasetInfo.load(copy)


def test_strict_stops_at_the_first_fault_in_one_line(catalogue, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["shard", "--manifest", str(catalogue), "--out", str(out), "--text", "title", "--strict",
                 "--no-progress", "--labels", ",".join(LABELS)]) == 2
    err = capsys.readouterr().err
    assert err == (f"mmfuse: error: {catalogue}:{ITEMS + 1}: record 'bad-missing-image': image: missing file "
                   f"{catalogue.parent / 'media' / 'nowhere.jpg'}\n")
    assert not out.exists() and not list(tmp_path.glob(".out-*"))  # nothing half-written is left


def test_two_workers_write_identical_shards(catalogue, shards, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["shard", "--manifest", str(catalogue), "--out", str(out), "--text", "title", "--workers", "2",
                 "--shard-size", "16", "--no-progress", "--labels", ",".join(LABELS)]) == 0
    assert f"wrote {ITEMS} samples" in capsys.readouterr().out
    one, two = (json.loads((d / "dataset.json").read_text())["splits"] for d in (shards, out))
    assert one == two  # same shards, byte for byte (same sha256)
    assert (out / "rejects.jsonl").read_text() == (shards / "rejects.jsonl").read_text()


def test_csv_manifest_with_split_column_and_byte_limit(catalogue, tmp_path):
    rows = list(manifest_rows(catalogue).values())[:20]
    manifest = catalogue.parent / "items.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, ["key", "title", "tags", "image", "audio", "label", "part"], extrasaction="ignore")
        writer.writeheader()
        for i, row in enumerate(rows):
            writer.writerow({**row, "tags": f"tag{i}", "part": "train" if i < 15 else "test"})
        writer.writerow({"key": "no-label", "title": "an oak toy", "image": rows[0]["image"], "part": "train"})
    report = write_shards(ShardConfig(manifest=str(manifest), out=str(tmp_path / "out"), text=["title", "tags"],
                                      audio=None, split="part", shard_bytes=20_000, progress=False))
    assert report.counts == {"train": 15, "test": 5} and report.reasons == {"label: missing label": 1}
    info = DatasetInfo.load(tmp_path / "out")
    assert len(info.shard_urls("train")) > 1 and "audio" not in info.modalities
    texts = {r["key"]: r["text"] for r in read_records(info, "train")}
    assert texts["item-000003"] == rows[3]["title"] + "\ntag3"


def test_hash_split_is_stable_and_follows_the_fractions():
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    splits = Counter(hash_split(f"k{i}", fractions) for i in range(5000))
    assert hash_split("k1", fractions) == hash_split("k1", dict(fractions))
    assert 0.77 < splits["train"] / 5000 < 0.83 and 0.08 < splits["test"] / 5000 < 0.12


@pytest.mark.parametrize("kwargs, message", [
    ({"manifest": "items.txt"}, "expected a .jsonl or .csv file"),
    ({"fractions": {"train": 0.5}}, "sum to 1"),
    ({"text": [], "image": None, "audio": None}, "maps no column to a modality"),
])
def test_bad_config_is_a_data_error(kwargs, message):
    with pytest.raises(DataError, match=message):
        ShardConfig(**{"manifest": "items.jsonl", "out": "out", **kwargs})


def test_not_empty_output_is_refused(catalogue, shards):
    with pytest.raises(DataError, match="is not empty"):
        write_shards(ShardConfig(manifest=str(catalogue), out=str(shards), text=["title"], progress=False))


def test_end_to_end_shard_then_finetune(tmp_path, capsys):
    from test_cli import TINY_FLAGS

    assert main(["demo-data", "--manifest", str(tmp_path / "cat"), "--count", "40", "--faults"]) == 0
    assert main(["shard", "--manifest", str(tmp_path / "cat" / "items.jsonl"), "--out", str(tmp_path / "data"),
                 "--text", "title", "--fractions", "train=0.6,val=0.2,test=0.2", "--no-progress"]) == 0
    assert f"refused {len(FAULTS) - 1} rows" in capsys.readouterr().out  # no --labels: "unknown" is a 7th class
    assert main(["finetune", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--max-steps", "2", "--set", "data.verify_shards=true", "--set", "data.resampled=true",
                 "--set", "data.epoch_samples=40", *TINY_FLAGS]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["skipped_total"] == 0 and "mmfuse: skipped 0 samples" in printed
    assert metrics["test"]["count"] == DatasetInfo.load(tmp_path / "data").count("test")


def test_malformed_rows_are_listed_not_fatal(tmp_path):
    manifest = tmp_path / "items.jsonl"
    manifest.write_text('{"key": "a", "text": "an oak toy", "label": "x"}\nnot json\n[1, 2]\n\n'
                        '{"key": "b.c", "text": "t", "label": "x"}\n{"key": "d", "text": "t"}\n'
                        '{"key": "e", "text": "", "label": "x"}\n{"key": 7, "text": "t", "label": "y", "image": ""}\n')
    report = write_shards(ShardConfig(manifest=str(manifest), out=str(tmp_path / "out"), split="part",
                                      empty_text="absent", progress=False))
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["field"]) for r in rejects] == [
        (1, "part"), (2, "manifest"), (3, "manifest"), (5, "key"), (6, "label"), (7, "part"), (8, "part")]
    assert rejects[1]["reason"].startswith("invalid JSON") and report.counts == {}
    again = write_shards(ShardConfig(manifest=str(manifest), out=str(tmp_path / "again"), progress=False,
                                     fractions={"train": 1.0}, empty_text="absent"))
    assert again.counts == {"train": 2} and again.reasons == {
        "manifest: invalid JSON": 1, "manifest: a line must be a JSON object": 1,
        "key: key contains '.' or starts/ends with '/'": 1, "label: missing label": 1,
        "record: no text, image or audio": 1}


def test_audio_cut_short_or_silent_is_refused_unless_silence_is_kept(tmp_path):
    import io

    import numpy as np

    from mmfuse.data.checks import check_audio
    from mmfuse.errors import FieldError

    buf = io.BytesIO()
    sf.write(buf, np.full(4000, 0.25, dtype=np.float32), 16_000, format="WAV")
    whole = buf.getvalue()
    assert check_audio(whole, "wav") == "wav"
    with pytest.raises(FieldError, match=r"truncated WAV audio: the header declares 8000 bytes of samples, the file "
                                      r"holds 3956"):
        check_audio(whole[:4000], "wav")
    buf = io.BytesIO()
    sf.write(buf, np.zeros(4000, dtype=np.float32), 16_000, format="FLAC")
    with pytest.raises(FieldError, match=r"silent audio \(all 4000 samples are 0\)"):
        check_audio(buf.getvalue(), "flac")
    assert check_audio(buf.getvalue(), "flac", silent="keep") == "flac"
