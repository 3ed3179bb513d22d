"""Hostile input, numbers and partial data (issue 14, items 3-4): non-finite media, targets, config values and
losses get a clear stop or a counted refusal; unreadable shard data and typo'd columns are never silent."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from mmfuse.cli import main
from mmfuse.config import resolve
from mmfuse.data.info import DatasetInfo
from mmfuse.data.loader import make_loader
from mmfuse.errors import ConfigError, DataError, TrainingError
from mmfuse.train.distributed import DistEnv
from mmfuse.train.finite import LossWatch
from mmfuse.train.selection import Selection


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("mmfuse: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def wav(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples.astype(np.float32), 16_000, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def write_jsonl(path: Path, rows: list[dict], bom: bool = False) -> Path:
    path.write_text(("\ufeff" if bom else "") + "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def text_rows(n: int = 12) -> list[dict]:
    return [{"key": f"k{i}", "text": f"an oak toy number {i}", "label": "ab"[i % 2], "price": float(i)}
            for i in range(n)]


def shard_cli(manifest: Path, out: Path, *extra: str) -> int:
    return main(["shard", "--manifest", str(manifest), "--out", str(out), "--image", "", "--audio", "",
                 "--no-progress", *extra])


# -- 3. finite numbers: config ------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, field", [
    (["--lr", "inf"], "train.lr"), (["--lr", "nan"], "train.lr"), (["--seed", "-1"], "train.seed"),
    (["--set", "model.dropout=5"], "model.dropout"), (["--set", "train.grad_clip=-1"], "train.grad_clip"),
    (["--max-steps", "0"], "train.max_steps"), (["--max-steps", "-1"], "train.max_steps"),
    (["--set", "data.shuffle_buffer=-1"], "data.shuffle_buffer"), (["--set", "train.lr=.nan"], "train.lr"),
    (["--set", "train.weight_decay=.inf"], "train.weight_decay"), (["--set", "train.encoder_lr=-1"], "encoder_lr"),
    (["--set", "train.tower_lr.text=.nan"], "train.tower_lr.text"), (["--set", "train.epochs=.inf"], "train.epochs"),
    (["--set", "model.contrastive_weight=.nan"], "model.contrastive_weight"),
    (["--set", "train.nonfinite=ignore"], "train.nonfinite"),
])
def test_bad_config_numbers_are_one_line_errors_naming_the_field(args, field, tmp_path, capsys):
    assert main(["finetune", "--out", str(tmp_path / "run"), *args]) == 2
    assert field in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_config_finiteness_holds_for_the_library_too():
    with pytest.raises(ConfigError, match="train.lr must be a finite number"):
        resolve({"train": {"lr": math.inf}})
    with pytest.raises(ConfigError, match="train.warmup"):
        resolve({"train": {"warmup": math.nan}})


# -- 3. finite numbers: the trainer's watch and model selection ---------------------------------------------------
def test_loss_watch_names_the_step_and_keys_of_the_first_non_finite_loss():
    watch = LossWatch(DistEnv(device=torch.device("cpu")), every=10)
    watch.add(1, ["a", "b"], torch.tensor(0.5))
    watch.add(2, ["c", "d"], torch.tensor(float("nan")))
    watch.add(3, ["e"], torch.tensor(float("inf")))
    with pytest.raises(TrainingError, match=r"non-finite loss \(nan\) at step 2, batch keys: c, d;"):
        watch.check()
    watch.check()  # nothing pending any more


def test_loss_watch_skip_mode_drops_a_step_with_a_non_finite_loss_or_gradient():
    watch = LossWatch(DistEnv(device=torch.device("cpu")), every=10)
    watch.note(torch.tensor(1.0))
    assert not watch.drop_step(torch.tensor(2.0))
    watch.note(torch.tensor(1.0))
    watch.note(torch.tensor(float("-inf")))
    assert watch.drop_step()
    assert watch.drop_step(torch.tensor(float("nan")))  # a finite loss with a NaN gradient norm
    assert watch.skipped == 2


def test_selection_never_picks_a_nan_metric():
    s = Selection("accuracy", higher_is_better=True, keep=2)
    assert s.update(1, float("nan")) == (False, [1]) and s.best_epoch == 0 and s.top == []
    assert s.update(2, 0.3) == (True, [])
    assert s.update(3, float("inf")) == (False, [3]) and s.best_epoch == 2


def run_config(tiny_layers, tmp_path: Path, **train) -> Path:
    layers = {**tiny_layers, "train": {**tiny_layers["train"], **train}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(layers))
    return path


def test_a_nan_loss_stops_the_run_naming_step_and_keys_and_saves_nothing(tiny_layers, tmp_path, capsys):
    config = run_config(tiny_layers, tmp_path)
    assert main(["finetune", "--config", str(config), "--lr", "1e30"]) == 2
    line = one_line_error(capsys)
    assert "non-finite loss" in line and "at step 2," in line and "batch keys: train-" in line
    run = tmp_path / "run"
    assert not (run / "checkpoints").exists() and not (run / "metrics.json").exists()


def poison(monkeypatch, key: str) -> None:
    """Every batch holding sample `key` gets a NaN loss."""
    from mmfuse.train.trainer import Trainer

    original = Trainer.loss

    def loss(self, batch):
        value = original(self, batch)
        return value * float("nan") if key in batch["key"] else value

    monkeypatch.setattr(Trainer, "loss", loss)


def test_a_poisoned_batch_stops_the_library_run_too(tiny_layers, monkeypatch):
    poison(monkeypatch, "train-000007")
    from mmfuse.finetune import finetune

    with pytest.raises(TrainingError, match=r"at step \d+, batch keys: .*train-000007"):
        finetune(resolve(tiny_layers, {"train": {"epochs": 1}}), echo=lambda *_: None)


@pytest.mark.slow
def test_nonfinite_skip_drops_and_counts_the_poisoned_step(tiny_layers, tmp_path, monkeypatch, capsys):
    poison(monkeypatch, "train-000007")
    config = run_config(tiny_layers, tmp_path, epochs=1, nonfinite="skip", precision="fp32")
    assert main(["finetune", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "1 non-finite steps skipped" in out and "skipped 1 optimizer steps with a non-finite loss" in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["nonfinite_skipped"] == 1 and math.isfinite(metrics["epochs"][0]["train_loss"])
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "run" / "checkpoints" / "best" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


# -- 3. finite numbers: shard and embed -----------------------------------------------------------------------------
def test_nan_audio_is_refused_by_the_shard_check():
    from mmfuse.data.checks import check_audio
    from mmfuse.errors import FieldError

    clip = np.full(4000, 0.25)
    assert check_audio(wav(clip), "wav") == "wav"
    clip[100] = np.nan
    with pytest.raises(FieldError, match=r"non-finite audio \(1 of 4000 samples are NaN or Inf\)"):
        check_audio(wav(clip), "wav")


def test_shard_refuses_nan_wav_and_out_of_range_targets(tmp_path, capsys):
    media = tmp_path / "media"
    media.mkdir()
    (media / "ok.wav").write_bytes(wav(np.full(4000, 0.25)))
    (media / "nan.wav").write_bytes(wav(np.full(4000, np.nan)))
    rows = [{**r, "audio": f"media/{'nan' if r['key'] == 'k3' else 'ok'}.wav"} for r in text_rows()]
    rows[5]["price"], rows[6]["price"] = 1e308, -1e308
    manifest = write_jsonl(tmp_path / "items.jsonl", rows)
    assert main(["shard", "--manifest", str(manifest), "--out", str(tmp_path / "out"), "--image", "",
                 "--task", "regression", "--targets", "price", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 9 samples" in printed and "refused 3 rows" in printed
    rejects = {r["key"]: r for r in map(json.loads, (tmp_path / "out" / "rejects.jsonl").read_text().splitlines())}
    assert rejects["k3"]["field"] == "audio" and rejects["k3"]["reason"].startswith("non-finite audio")
    assert rejects["k5"]["field"] == "price" and "out of range" in rejects["k5"]["reason"] and "k6" in rejects
    stats = json.loads((tmp_path / "out" / "dataset.json").read_text())["target_stats"]
    assert all(math.isfinite(v) for v in stats["mean"] + stats["std"])


def test_a_shard_member_with_a_huge_target_is_skipped_by_the_loader():
    from mmfuse.data.targets import FieldError, decode_target

    info = DatasetInfo(Path("."), {"text": ["txt"]}, [], "tgt", {}, task="regression", targets=["price"])
    assert decode_target("regression", {"tgt": b"[2.5]"}, info)["target"].item() == 2.5
    with pytest.raises(FieldError, match="finite numbers"):
        decode_target("regression", {"tgt": b"[1e308]"}, info)


def test_embed_never_writes_a_non_finite_vector(tmp_path, monkeypatch, capsys):
    from mmfuse.inference import Embedder

    original = Embedder.embed_prepared

    def embed_prepared(self, samples, modalities):
        out = original(self, samples, modalities)
        out["fused"][1] = float("nan")  # the second item of each part
        return out

    monkeypatch.setattr(Embedder, "embed_prepared", embed_prepared)
    manifest = write_jsonl(tmp_path / "items.jsonl", text_rows(6))
    out = tmp_path / "emb"
    assert main(["embed", "--run", "tiny_bottleneck", "--manifest", str(manifest), "--image", "", "--audio", "",
                 "--out", str(out), "--part-size", "3", "--no-progress"]) == 0
    assert "refused 2 rows" in capsys.readouterr().out
    fused = np.load(out / "fused_feat.npy")
    assert fused.shape[0] == 4 and np.isfinite(fused).all()
    ids = [line.split("\t")[0] for line in (out / "i_id_mapping.csv").read_text().splitlines()[1:]]
    assert ids == ["k0", "k2", "k3", "k5"]
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["id"], r["field"]) for r in rejects] == [("k1", "fused"), ("k4", "fused")]
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["counts"]["reasons"] == {"fused: non-finite embedding": 2}
    assert main(["embed", "--run", "tiny_bottleneck", "--manifest", str(manifest), "--image", "", "--audio", "",
                 "--out", str(tmp_path / "strict"), "--part-size", "3", "--no-progress", "--strict"]) == 2
    assert "item 'k1': fused: non-finite embedding" in one_line_error(capsys)


# -- 4. no silent partial data: manifests -------------------------------------------------------------------------
@pytest.mark.parametrize("args, column, close", [
    (["--text", "txt"], "txt", "text"), (["--label", "lable"], "lable", "label"),
    (["--key", "nokey"], "nokey", "key"), (["--text", "text,body"], "body", None),
    (["--task", "regression", "--targets", "prise"], "prise", "price"),
])
def test_a_column_in_no_row_is_an_error_naming_the_columns(args, column, close, tmp_path, capsys):
    manifest = write_jsonl(tmp_path / "items.jsonl", text_rows())
    assert shard_cli(manifest, tmp_path / "out", *args) == 2
    line = one_line_error(capsys)
    assert f"column '{column}'" in line and "its columns are: key, text, label, price" in line
    assert (f"did you mean '{close}'" in line) == bool(close)
    assert not (tmp_path / "out").exists()


def test_a_typod_media_column_is_an_error_for_shard_and_embed(tmp_path, capsys):
    manifest = write_jsonl(tmp_path / "items.jsonl", [{**r, "image": "x.png"} for r in text_rows()])
    assert main(["shard", "--manifest", str(manifest), "--out", str(tmp_path / "out"), "--image", "img",
                 "--no-progress"]) == 2
    assert "column 'img' (--image) is in no row (did you mean 'image'?)" in one_line_error(capsys)
    assert main(["embed", "--run", "tiny_bottleneck", "--manifest", str(manifest), "--key", "id",
                 "--out", str(tmp_path / "emb")]) == 2
    assert "column 'id' (--key) is in no row" in one_line_error(capsys)


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_a_utf8_bom_is_tolerated(kind, tmp_path, capsys):
    rows = text_rows()
    if kind == "jsonl":
        manifest = write_jsonl(tmp_path / "items.jsonl", rows, bom=True)
    else:
        manifest = tmp_path / "items.csv"
        manifest.write_text("\ufeffkey,text,label\n" + "".join(f"{r['key']},{r['text']},{r['label']}\n" for r in rows),
                            encoding="utf-8")
    assert shard_cli(manifest, tmp_path / "out") == 0
    assert "wrote 12 samples" in capsys.readouterr().out
    assert (tmp_path / "out" / "rejects.jsonl").read_text() == ""


# -- 4. no silent partial data: shards ------------------------------------------------------------------------------
def damaged(demo_shards, tmp_path: Path, how: str, shard: int = 0, split: str = "train") -> Path:
    """A copy of the demo shards with one shard of `split` damaged (`how`); its size no longer recorded."""
    out = tmp_path / f"data-{how}"
    shutil.copytree(demo_shards, out)
    meta = json.loads((out / "dataset.json").read_text())
    entries = meta["splits"][split]["shards"]
    for entry in entries if shard == "all" else [entries[shard]]:
        path = out / entry["path"]
        data = path.read_bytes()
        path.write_bytes(b"" if how == "empty" else data[: len(data) // 2 + 100])
        entry.pop("bytes", None)
        entry.pop("sha256", None)
    (out / "dataset.json").write_text(json.dumps(meta))
    return out


@pytest.mark.parametrize("how, reason", [("empty", "shard: empty file"),
                                         ("truncated", "shard: truncated (a member is cut short)")])
def test_unreadable_shard_data_is_counted_per_reason_by_the_loader(how, reason, demo_shards, tmp_path, preprocessors):
    info = DatasetInfo.load(damaged(demo_shards, tmp_path, how))
    skipped, keys = {}, 0
    with pytest.warns(UserWarning, match="unreadable shard data"):
        for batch in make_loader(info, "train", preprocessors, 16):
            keys += len(batch["key"])
            for r, n in batch["skipped"].items():
                skipped[r] = skipped.get(r, 0) + n
    assert skipped == {reason: 1} and keys < 96


def test_a_zero_byte_shard_with_strict_is_a_one_line_error(tiny_layers, demo_shards, tmp_path, capsys):
    config = run_config(tiny_layers, tmp_path)
    data = damaged(demo_shards, tmp_path, "empty")
    assert main(["finetune", "--config", str(config), "--data", str(data), "--strict"]) == 2
    assert "train-000000.tar: empty file (0 bytes)" in one_line_error(capsys)


def test_zero_training_samples_is_an_error(tiny_layers, demo_shards, tmp_path, capsys):
    config = run_config(tiny_layers, tmp_path)
    data = damaged(demo_shards, tmp_path, "empty", shard="all")
    with pytest.warns(UserWarning):
        assert main(["finetune", "--config", str(config), "--data", str(data)]) == 2
    line = one_line_error(capsys)
    assert "split 'train'" in line and "yielded no training sample (dataset.json lists 96)" in line
    assert "unreadable shard data: empty file x3" in line


@pytest.mark.slow
def test_a_truncated_train_shard_is_reported_in_the_summary_and_metrics(tiny_layers, demo_shards, tmp_path, capsys):
    config = run_config(tiny_layers, tmp_path, epochs=1)
    data = damaged(demo_shards, tmp_path, "truncated", shard=1)
    with pytest.warns(UserWarning):
        assert main(["finetune", "--config", str(config), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "mmfuse: warning: split 'train'" in out and "unread (unreadable shard data: truncated" in out
    summary = next(line for line in out.splitlines() if line.startswith("mmfuse: skipped"))
    assert summary.startswith("mmfuse: skipped 0 samples; unreadable shard data: truncated") and \
        "x1; samples unread: train" in summary
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(metrics["unreadable_shards"].values()) == [1]
    assert metrics["incomplete_splits"]["train"]["missing"] > 0 and metrics["skipped_total"] == 0
    assert main(["finetune", "--config", str(config), "--data", str(data), "--strict",
                 "--out", str(tmp_path / "strict")]) == 2
    assert "unreadable shard" in one_line_error(capsys)


def test_a_val_split_short_of_its_count_is_reported(tiny_layers, demo_shards, tmp_path, capsys):
    data = tmp_path / "short-val"
    shutil.copytree(demo_shards, data)
    meta = json.loads((data / "dataset.json").read_text())
    meta["splits"]["val"]["count"] += 5  # the shards hold fewer samples than listed: no read error at all
    (data / "dataset.json").write_text(json.dumps(meta))
    config = run_config(tiny_layers, tmp_path, epochs=1, max_steps=1)
    assert main(["finetune", "--config", str(config), "--data", str(data), "--strict"]) == 2
    line = one_line_error(capsys)
    assert "split 'val'" in line and "yielded 32 samples + 0 skipped of the 37 dataset.json lists: 5 unread" in line


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["modalities"].update(text="txt"), "'modalities' must map each modality to a list"),
    (lambda m: m["splits"]["train"]["shards"].__setitem__(0, {"path": "/dev/zero"}), "shard path '/dev/zero' .* is not "
                                                                                      "allowed"),
    (lambda m: m["splits"]["train"].update(count="many"), "split 'train' needs a sample 'count'"),
])
def test_malformed_dataset_json_is_a_one_line_error(edit, message, demo_shards, tmp_path, capsys):
    data = tmp_path / "bad"
    shutil.copytree(demo_shards, data)
    meta = json.loads((data / "dataset.json").read_text())
    edit(meta)
    (data / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=message):
        DatasetInfo.load(data)
    assert main(["embed", "--run", "tiny_bottleneck", "--shards", str(data), "--out", str(tmp_path / "x")]) == 2
    assert message.split("'")[0] in one_line_error(capsys)


def test_a_strict_error_inside_a_loader_worker_is_still_one_line(tiny_layers, demo_shards, tmp_path, capsys):
    config = run_config(tiny_layers, tmp_path)
    data = damaged(demo_shards, tmp_path, "empty")
    assert main(["finetune", "--config", str(config), "--data", str(data), "--strict", "--workers", "1"]) == 2
    assert one_line_error(capsys) == (f"mmfuse: error: unreadable shard: {data / 'train-000000.tar'}: empty file "
                                      f"(0 bytes), not a tar file")


def test_embed_from_shards_lists_unreadable_shard_data_as_rejects(demo_shards, tmp_path, capsys):
    data = damaged(demo_shards, tmp_path, "empty", split="test")
    out = tmp_path / "emb"
    assert main(["embed", "--run", "tiny_bottleneck", "--shards", str(data), "--splits", "test",
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "8 of 10 items" in printed and "shard: empty file x1, shard: fewer samples than dataset.json lists x1" \
        in printed
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [r["field"] for r in rejects] == ["shard", "shard"] and "test-000000.tar" in rejects[0]["reason"]
    assert main(["embed", "--run", "tiny_bottleneck", "--shards", str(data), "--out", str(tmp_path / "strict"),
                 "--strict", "--no-progress"]) == 2
    assert "test-000000.tar: empty file (0 bytes)" in one_line_error(capsys)


def test_embed_refuses_a_nan_wav_with_the_shard_reason(tmp_path, capsys):
    (tmp_path / "ok.wav").write_bytes(wav(np.full(4000, 0.25)))
    (tmp_path / "nan.wav").write_bytes(wav(np.full(4000, np.inf)))
    rows = [{"key": "a", "text": "an oak toy", "audio": "ok.wav"},
            {"key": "b", "text": "a steel toy", "audio": "nan.wav"}]
    manifest = write_jsonl(tmp_path / "items.jsonl", rows)
    out = tmp_path / "emb"
    assert main(["embed", "--run", "tiny_bottleneck", "--manifest", str(manifest), "--image", "", "--out", str(out),
                 "--no-progress"]) == 0
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["id"], r["reason"]) for r in rejects] == [("b", "audio: non-finite audio (4000 of 4000 samples are "
                                                                "NaN or Inf)")]
    assert np.isfinite(np.load(out / "fused_feat.npy")).all()
