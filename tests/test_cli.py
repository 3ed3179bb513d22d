"""The CLI end to end: fine-tune a tiny model for a few steps, check what it wrote, reload it, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

import mmfuse
from mmfuse.cli import main
from mmfuse.data.info import DatasetInfo
from mmfuse.data.loader import read_records
from mmfuse.errors import DataError

TINY_FLAGS = ["--set", "model.dim=32", "--set", "model.encoders.text.kwargs.width=16",
              "--set", "model.encoders.image.kwargs.width=16", "--set", "model.encoders.image.kwargs.image_size=32",
              "--set", "train.log_every=2", "--batch-size", "16", "--no-progress"]


def finetune(demo_shards, out, *extra: str) -> int:
    return main(["finetune", "--data", str(demo_shards), "--out", str(out), "--epochs", "2", *TINY_FLAGS, *extra])


def test_finetune_writes_run_and_load_reproduces_test_accuracy(demo_shards, tmp_path, capsys):
    assert finetune(demo_shards, tmp_path / "run") == 0
    printed = capsys.readouterr().out
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    best, acc = metrics["best_epoch"], metrics["test"]["accuracy"]
    assert f"test accuracy (text+image, best epoch {best}): {acc:.4f}" in printed
    assert metrics["test"]["count"] == 40 and metrics["skipped_total"] == 0
    assert [e["train_samples"] for e in metrics["epochs"]] == [96, 96]
    for ckpt in ("best", "last"):
        assert (run / "checkpoints" / ckpt / "model.safetensors").exists()
        assert (run / "checkpoints" / ckpt / "config.json").exists()
    resolved = yaml.safe_load((run / "run_config.yaml").read_text())
    assert resolved["model"]["dim"] == 32 and resolved["data"]["path"] == str(demo_shards)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if "val_accuracy" in r] == [1, 2]
    assert any("loss" in r and "step" in r for r in lines)

    predictor = mmfuse.load(run)
    records = list(read_records(DatasetInfo.load(demo_shards), "test"))
    predicted = predictor.predict(records)
    accuracy = sum(p == r["label"] for p, r in zip(predicted, records, strict=True)) / len(records)
    assert accuracy == metrics["test"]["accuracy"]
    emb = predictor.embed([{"text": "an oak toy"}, {"image": records[0]["image"]}, {}], normalize=True)
    assert emb.shape == (3, 32) and abs(float((emb**2).sum(1).mean()) - 1.0) < 1e-5
    # a record with none of the model's modalities: an error naming it, never a label answered from the head's bias
    for empty in ({}, {"key": "x9", "audio": b"RIFF"}, {"text": None}):
        with pytest.raises(DataError, match=r"record '(0|x9)' has none of the model's modalities \(image, text\)"):
            predictor.predict([empty])


@pytest.mark.parametrize("modalities", ["text", "image"])
def test_single_modality_runs(demo_shards, tmp_path, modalities):
    assert finetune(demo_shards, tmp_path / "run", "--modalities", modalities, "--max-steps", "3") == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["modalities"] == [modalities] and metrics["steps"] == 3


def test_gated_fusion_and_a_config_file(demo_shards, tmp_path):
    assert finetune(demo_shards, tmp_path / "run", "--config", "configs/demo-gated.yaml", "--max-steps", "2") == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["fusion"] == "gated"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--modalities", "text,video"], "unknown modality 'video'"),
        (["--data", "/nonexistent/shards"], "data path /nonexistent/shards does not exist"),
        (["--text-encoder", "bert-tiny"], "unknown encoder 'bert-tiny'"),
        (["--fusion", "concat"], "unknown fusion 'concat'"),
        (["--preset", "tiny_crossattention"], "unknown model preset 'tiny_crossattention'"),
        (["--audio-encoder", "hf-audio:/nonexistent/ast", "--modalities", "audio"], "cannot load audio model"),
        (["--set", "train.epoch=3"], "unknown config key 'train.epoch' (did you mean 'epochs'?)"),
        (["--config", "configs/missing.yaml"], "config file configs/missing.yaml does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(demo_shards, tmp_path, capsys, args, message):
    data = [] if "--data" in args else ["--data", str(demo_shards)]
    code = main(["finetune", *data, "--out", str(tmp_path / "run"), "--max-steps", "1", *TINY_FLAGS, *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("mmfuse: error: ") and message in err and err.count("\n") == 1


def test_three_modalities_token_fusion_from_a_preset_and_reload(demo_shards, tmp_path):
    run = tmp_path / "run"
    code = main(["finetune", "--data", str(demo_shards), "--out", str(run), "--epochs", "1", "--max-steps", "3",
                 "--batch-size", "16", "--no-progress", "--preset", "tiny_cross_attention"])
    assert code == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["modalities"] == ["text", "image", "audio"] and metrics["fusion"] == "cross-attention"
    assert metrics["test"]["count"] == 40
    predictor = mmfuse.load(run)
    record = next(read_records(DatasetInfo.load(demo_shards), "test"))
    assert "audio" in record
    with_audio, without = predictor.predict_proba([record, {k: v for k, v in record.items() if k != "audio"}])
    assert np.isfinite(without).all() and abs(without.sum() - 1) < 1e-5 and not np.allclose(with_audio, without)


def test_audio_encoder_flag(demo_shards, tmp_path):
    code = finetune(demo_shards, tmp_path / "run", "--modalities", "image,audio", "--fusion", "bottleneck",
                    "--audio-encoder", "tiny-audio", "--set", "model.encoders.audio.kwargs={width: 16, layers: 1}",
                    "--max-steps", "2")
    assert code == 0
    saved = yaml.safe_load((tmp_path / "run" / "run_config.yaml").read_text())
    assert saved["model"]["encoders"]["audio"] == {"name": "tiny-audio", "kwargs": {"width": 16, "layers": 1},
                                                   "pretrained": True}


def test_console_entry_point_and_module(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mmfuse", "list"], capture_output=True, text=True, check=True)
    assert "tiny-text" in out.stdout and "concat-mlp" in out.stdout
    for name in ("tiny-audio", "hf-audio", "open-clip-text", "cross-attention", "bottleneck", "lmf",
                 "tiny_cross_attention", "multilabel", "contrastive"):
        assert name in out.stdout
    help_text = subprocess.run([sys.executable, "-m", "mmfuse", "finetune", "--help"], capture_output=True,
                               text=True, check=True).stdout
    for flag in ("--modalities", "--config", "--data", "--out", "--epochs", "--fusion", "--set", "--audio-encoder",
                 "--preset", "--task"):
        assert flag in help_text
    bad = subprocess.run([sys.executable, "-m", "mmfuse", "finetune", "--modalities", "smell"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_import_mmfuse_is_light():
    heavy = "('torch', 'transformers', 'timm', 'open_clip', 'soundfile')"
    code = f"import sys, mmfuse; print(any(m.startswith({heavy}) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
