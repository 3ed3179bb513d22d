"""`mmfuse embed`: Parquet parts + MMRec files + metadata, bad rows reported, exact resume of an interrupted export,
and vectors equal to `mmfuse.load(...).embed` on the same records."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

import mmfuse
from mmfuse.cli import main
from mmfuse.data.demo import LABELS
from mmfuse.data.demo_manifest import write_demo_manifest
from mmfuse.data.info import DatasetInfo
from mmfuse.data.loader import read_records
from mmfuse.export import ExportOptions, ManifestSource, export_embeddings

PRESET = "tiny_bottleneck"
BAD = {"bad-missing-image": "image: missing file", "bad-truncated-jpeg": "image: unreadable or truncated JPEG image",
       "bad-corrupt-wav": "audio: unreadable audio", "bad-empty-text": "text: empty text",
       "item-000000": "id: duplicate id", "bad-truncated-wav": "audio: truncated WAV audio",
       "bad-silent-audio": "audio: silent audio"}
"""The demo faults `mmfuse embed` refuses, as `mmfuse shard` does (the unknown-label row is a label fault only)."""


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """60 demo items (some without audio) + the 8 known faults, 32 px images."""
    return write_demo_manifest(tmp_path_factory.mktemp("catalogue"), 60, faults=True)


def embed_cli(catalogue, out, *extra: str) -> int:
    return main(["embed", "--run", PRESET, "--manifest", str(catalogue), "--text", "title", "--out", str(out),
                 "--part-size", "16", "--batch-size", "8", "--no-progress", *extra])


@pytest.fixture(scope="module")
def exported(catalogue, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "full"
    assert embed_cli(catalogue, out) == 0
    return out


def load_ids(out) -> list[str]:
    lines = (out / "i_id_mapping.csv").read_text().splitlines()
    assert lines[0] == "item_id\titemID"
    assert [int(line.split("\t")[1]) for line in lines[1:]] == list(range(len(lines) - 1))
    return [line.split("\t")[0] for line in lines[1:]]


def manifest_records(catalogue) -> list[dict]:
    """The catalogue's good rows as `embed` records, in file order (the first row with a repeated key wins)."""
    rows, seen = [], set()
    for line in catalogue.read_text().splitlines():
        row = json.loads(line)
        if row["key"] in BAD and row["key"] != "item-000000" or row["key"] in seen:
            continue
        seen.add(row["key"])
        record = {"key": row["key"], "text": row["title"], "image": str(catalogue.parent / row["image"])}
        if "audio" in row:
            record["audio"] = str(catalogue.parent / row["audio"])
        rows.append(record)
    return rows


def test_export_writes_parts_mmrec_files_and_metadata(exported, catalogue, capsys):
    ids = load_ids(exported)
    records = manifest_records(catalogue)
    # 60 items + the unknown-label row (embed reads no labels)
    assert ids == [r["key"] for r in records] and len(ids) == 61
    fused = np.load(exported / "fused_feat.npy")
    assert fused.shape == (61, 16) and fused.dtype == np.float32 and np.isfinite(fused).all()
    expected = mmfuse.load(PRESET).embed_modalities(records)
    np.testing.assert_allclose(fused, expected["fused"], atol=1e-5)
    for m in ("text", "image", "audio"):
        matrix = np.load(exported / f"{m}_feat.npy")
        np.testing.assert_allclose(matrix, expected[m], atol=1e-5)
        assert ((np.abs(matrix).sum(1) > 0) == expected[f"present_{m}"]).all()
    assert not expected["present_audio"].all()

    table = pq.read_table(sorted((exported / "parts").glob("part-*.parquet"))[0])
    assert table.column_names == ["id", "fused", "audio", "image", "text"]
    audio = table.column("audio").to_pylist()
    assert [a is None for a in audio] == [not p for p in expected["present_audio"][:len(audio)]]

    meta = json.loads((exported / "metadata.json").read_text())
    assert meta["model"]["fingerprint"] == mmfuse.load(PRESET).fingerprint()
    assert meta["dims"] == {"fused": 16, "audio": 16, "image": 16, "text": 16} and meta["normalize"] is False
    assert meta["counts"]["input_rows"] == 68 and meta["counts"]["exported"] == 61
    assert meta["counts"]["rejected"] == len(BAD) == 7
    assert meta["counts"]["present"] == {m: int(expected[f"present_{m}"].sum()) for m in ("audio", "image", "text")}
    assert meta["counts"]["reasons"] == {reason: 1 for reason in BAD.values()}
    assert meta["parts"] == {"count": 5, "resumed": 0} and "missing_modalities" in meta
    rejects = [json.loads(line) for line in (exported / "rejects.jsonl").read_text().splitlines()]
    assert {r["id"]: r["reason"].startswith(BAD[r["id"]]) for r in rejects} == {k: True for k in BAD}
    assert {r["id"]: r["field"] for r in rejects} == {k: v.split(":")[0] for k, v in BAD.items()}
    assert rejects[0]["where"] == "items.jsonl:61"


def test_interrupted_export_resumes_to_identical_files(exported, catalogue, tmp_path, capsys):
    out = tmp_path / "resumed"
    source = ManifestSource(str(catalogue), text=["title"])

    def stop_after_two(index: int) -> None:
        if index == 1:
            raise KeyboardInterrupt

    options = ExportOptions(out=str(out), part_size=16, progress=False)
    with pytest.raises(KeyboardInterrupt):
        export_embeddings(mmfuse.load(PRESET, batch_size=8), source.items(), options, source.describe(),
                          on_part=stop_after_two)
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert not (out / "metadata.json").exists()
    (out / "parts" / ".part-00002.parquet.999.tmp").write_bytes(b"half a parquet file")  # a write cut short

    assert embed_cli(catalogue, out) == 0
    assert "5 part(s), 2 resumed" in capsys.readouterr().out
    assert not list((out / "parts").glob(".*.tmp"))
    assert load_ids(out) == load_ids(exported)
    for name in ("fused", "text", "image", "audio"):
        np.testing.assert_array_equal(np.load(out / f"{name}_feat.npy"), np.load(exported / f"{name}_feat.npy"))
    assert (out / "rejects.jsonl").read_text() == (exported / "rejects.jsonl").read_text()

    code = embed_cli(catalogue, out, "--normalize")
    assert code == 2 and "holds an export with other normalize" in capsys.readouterr().err


def test_bad_media_absent_keeps_the_rows_and_reports_them(catalogue, tmp_path, capsys):
    out = tmp_path / "absent"
    assert embed_cli(catalogue, out, "--bad-media", "absent", "--normalize", "--modalities", "text,image") == 0
    printed = capsys.readouterr().out
    assert "67 of 68 items" in printed and "3 exported with a bad modality left out" in printed
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["modalities"] == ["image", "text"] and not (out / "audio_feat.npy").exists()
    ids = load_ids(out)
    fused, image = np.load(out / "fused_feat.npy"), np.load(out / "image_feat.npy")
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-5)
    for key in ("bad-missing-image", "bad-truncated-jpeg"):
        assert not image[ids.index(key)].any()
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["id"], r["exported"]) for r in rejects] == [("item-000000", False), ("bad-missing-image", True),
                                                            ("bad-truncated-jpeg", True), ("bad-empty-text", True)]


def test_strict_stops_at_the_first_bad_row(catalogue, tmp_path, capsys):
    assert embed_cli(catalogue, tmp_path / "strict", "--strict", "--modalities", "text,image") == 2
    err = capsys.readouterr().err
    assert err.startswith("mmfuse: error: items.jsonl:61: item 'bad-missing-image': image: missing file")
    assert err.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    ([], "needs exactly one of --manifest FILE or --shards DIR"),
    (["--manifest", "nowhere.jsonl"], "manifest nowhere.jsonl does not exist"),
    (["--shards", "/nonexistent"], "data path /nonexistent does not exist"),
])
def test_bad_invocations_are_one_line(tmp_path, capsys, args, message):
    assert main(["embed", "--run", PRESET, "--out", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_export_from_shards(demo_shards, tmp_path):
    out = tmp_path / "shards"
    assert main(["embed", "--run", PRESET, "--shards", str(demo_shards), "--splits", "test,val", "--out", str(out),
                 "--modalities", "image,text", "--no-progress"]) == 0
    info = DatasetInfo.load(demo_shards)
    records = list(read_records(info, "test")) + list(read_records(info, "val"))
    assert load_ids(out) == [r["key"] for r in records]
    expected = mmfuse.load(PRESET).embed(records, modalities="text,image")
    np.testing.assert_allclose(np.load(out / "fused_feat.npy"), expected, atol=1e-5)
    assert json.loads((out / "metadata.json").read_text())["source"]["splits"] == ["test", "val"]


def test_csv_manifest_with_two_text_columns_and_an_empty_image_cell(catalogue, tmp_path, capsys):
    media = catalogue.parent / "media"
    image = next(media.glob("*.png"))
    (tmp_path / "items.csv").write_text(f"sku,name,brand,photo\nA1,oak toy,Acme,{image}\nB2,steel piece,,\n"
                                        "C3,,,\n")
    out = tmp_path / "csv"
    assert main(["embed", "--run", PRESET, "--manifest", str(tmp_path / "items.csv"), "--key", "sku",
                 "--text", "name,brand", "--image", "photo", "--audio", "", "--out", str(out), "--no-progress"]) == 0
    assert load_ids(out) == ["A1", "B2"]
    expected = mmfuse.load(PRESET).embed_modalities([{"text": "oak toy\nAcme", "image": str(image)},
                                                     {"text": "steel piece"}])
    np.testing.assert_allclose(np.load(out / "fused_feat.npy"), expected["fused"], atol=1e-5)
    assert not np.load(out / "image_feat.npy")[1].any()
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert rejects == [{"row": 2, "where": "items.csv:4", "id": "C3", "field": "text", "reason": "text: empty text",
                        "exported": False}]  # blank cells in the text columns, as mmfuse shard refuses them


def test_embed_and_shard_refuse_the_same_demo_faults(tmp_path, capsys):
    from mmfuse.data.demo_manifest import FAULTS

    assert main(["demo-data", "--manifest", str(tmp_path / "cat"), "--count", "20", "--faults"]) == 0
    manifest = str(tmp_path / "cat" / "items.jsonl")
    assert main(["shard", "--manifest", manifest, "--out", str(tmp_path / "data"), "--text", "title",
                 "--labels", ",".join(LABELS), "--no-progress"]) == 0
    assert main(["embed", "--run", PRESET, "--manifest", manifest, "--text", "title", "--out", str(tmp_path / "emb"),
                 "--no-progress"]) == 0
    assert "refused 7 rows" in capsys.readouterr().out.splitlines()[-1]
    sharded = {r["key"]: r for r in map(json.loads, (tmp_path / "data" / "rejects.jsonl").read_text().splitlines())}
    embedded = {r["id"]: r for r in map(json.loads, (tmp_path / "emb" / "rejects.jsonl").read_text().splitlines())}
    assert set(sharded) == set(FAULTS) and set(embedded) == set(FAULTS) - {"bad-unknown-label"}
    for key in ("bad-truncated-jpeg", "bad-corrupt-wav", "bad-truncated-wav", "bad-silent-audio"):
        assert embedded[key]["reason"] == f"{sharded[key]['field']}: {sharded[key]['reason']}"
    meta = json.loads((tmp_path / "emb" / "metadata.json").read_text())
    assert meta["counts"]["rejected"] == 7 and meta["counts"]["exported"] == 21  # + the unknown-label row
    assert meta["counts"]["reasons"]["audio: truncated WAV audio"] == 1
