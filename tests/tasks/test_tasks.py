"""Multilabel and regression fine-tuning through the CLI and `mmfuse.load`; task selection and its errors; old
checkpoints (no task in config.json) load as classifiers."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mmfuse.checkpoint import save_checkpoint
from mmfuse.cli import main
from mmfuse.config import resolve
from mmfuse.data.demo_manifest import write_demo_manifest
from mmfuse.data.info import DatasetInfo
from mmfuse.errors import ConfigError
from mmfuse.finetune import finetune
from mmfuse.inference import load
from mmfuse.tasks import create_model_and_task

TINY_FLAGS = ["--no-progress", "--batch-size", "16", "--set", "model.dim=32",
              "--set", "model.encoders.text.kwargs.width=16", "--set", "model.encoders.text.kwargs.layers=1",
              "--set", "model.encoders.image.kwargs.width=16", "--set", "model.encoders.image.kwargs.layers=1",
              "--set", "model.encoders.image.kwargs.image_size=32"]


@pytest.fixture(scope="module")
def task_shards(tmp_path_factory) -> dict[str, Path]:
    """The demo manifest (96 items) sharded three ways: classification, multilabel tags, regression price."""
    root = tmp_path_factory.mktemp("tasks")
    manifest = write_demo_manifest(root / "catalogue", 96, seed=3)
    common = ["shard", "--manifest", str(manifest), "--text", "title", "--no-progress",
              "--fractions", "train=0.6,val=0.2,test=0.2"]
    out = {}
    for kind, extra in (("multilabel", ["--task", "multilabel", "--label", "tags"]),
                        ("regression", ["--task", "regression", "--targets", "price"])):
        out[kind] = root / kind
        assert main([*common, "--out", str(out[kind]), *extra]) == 0
    return out


def test_multilabel_finetune_and_predict(task_shards, tmp_path, capsys):
    out = tmp_path / "ml"
    assert main(["finetune", "--data", str(task_shards["multilabel"]), "--task", "multilabel", "--out", str(out),
                 "--epochs", "1", "--max-steps", "3", "--set", "model.task_kwargs.threshold=0.4", *TINY_FLAGS]) == 0
    printed = capsys.readouterr().out
    assert "multilabel: 5 labels" in printed and "test mAP (text+image, best epoch 1)" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    info = DatasetInfo.load(task_shards["multilabel"])
    assert metrics["task"] == "multilabel" and metrics["labels"] == info.labels
    assert set(metrics["val"]) == {"map", "micro_f1", "macro_f1"} and metrics["test"]["count"] == info.count("test")
    assert {"val_map", "val_micro_f1"} <= set(metrics["epochs"][0])
    predictor = load(out)
    records = [{"text": "an oak toy", "image": np.full((32, 32, 3), 200, dtype=np.uint8)}, {"text": "steel"}]
    proba = predictor.predict_proba(records)
    assert proba.shape == (2, 5) and ((proba > 0) & (proba < 1)).all()
    assert not np.allclose(proba.sum(1), 1.0)  # independent sigmoids, not a softmax
    predicted = predictor.predict(records)
    assert [sorted(p) for p in predicted] == [sorted(np.array(info.labels)[row >= 0.4].tolist()) for row in proba]


def test_regression_finetune_and_predict(task_shards, tmp_path, capsys):
    out = tmp_path / "reg"
    assert main(["finetune", "--data", str(task_shards["regression"]), "--task", "regression", "--out", str(out),
                 "--epochs", "2", "--max-steps", "4", "--set", "model.task_kwargs.loss=huber", *TINY_FLAGS]) == 0
    assert "regression: 1 target)" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["labels"] == ["price"] and set(metrics["val"]) == {"rmse", "mae", "r2"}
    best = min(metrics["epochs"], key=lambda e: e["val_rmse"])  # lower is better
    assert metrics["best_epoch"] == best["epoch"]
    predictor = load(out)
    assert predictor.config.task_kwargs["target_mean"] == DatasetInfo.load(task_shards["regression"]).target_stats[
        "mean"]
    predicted = predictor.predict([{"text": "an oak toy"}, {"text": "a steel toy"}])
    assert [list(p) for p in predicted] == [["price"], ["price"]]
    assert all(0 < p["price"] < 100 for p in predicted)  # de-standardised: in the price's units
    with pytest.raises(ConfigError, match="no class probabilities"):
        predictor.predict_proba([{"text": "an oak toy"}])


def test_a_task_needs_its_kind_of_dataset(task_shards, demo_shards, tiny_layers):
    with pytest.raises(ConfigError, match="task 'multilabel' needs a multilabel dataset"):
        finetune(resolve(tiny_layers, {"model": {"task": "multilabel"}}), echo=lambda *_: None)
    with pytest.raises(ConfigError, match="task 'classification' needs a classification dataset"):
        finetune(resolve(tiny_layers, {"data": {"path": str(task_shards["regression"])}}), echo=lambda *_: None)
    with pytest.raises(ConfigError, match="unknown task 'ranking'"):  # before any data is read
        finetune(resolve(tiny_layers, {"model": {"task": "ranking"}, "data": {"path": "/nonexistent"}}),
                 echo=lambda *_: None)
    with pytest.raises(ConfigError, match="task_kwargs.threshold: not an option of task 'classification'"):
        create_model_and_task(replace(resolve(tiny_layers).model, labels=["a", "b"], task_kwargs={"threshold": 0.3}))[0]


def test_a_checkpoint_without_a_task_loads_as_a_classifier(tiny_config, tmp_path):
    config = replace(tiny_config.model, labels=["a", "b", "c"])
    save_checkpoint(create_model_and_task(config)[0], config, tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    for key in ("task", "task_kwargs", "contrastive_loss", "contrastive_weight"):
        del meta["model"][key]  # what mmfuse wrote before tasks existed
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(meta))
    predictor = load(tmp_path / "ckpt")
    assert predictor.task.name == "classification" and predictor.model.alignment is None
    proba = predictor.predict_proba([{"text": "an oak toy"}])
    assert proba.shape == (1, 3) and np.isclose(proba.sum(), 1.0)
    assert predictor.predict([{"text": "an oak toy"}])[0] in ("a", "b", "c")


@pytest.mark.slow
def test_multilabel_and_regression_learn_the_demo_targets(tmp_path):
    """600 demo items, tiny towers, 4 epochs: tags mAP well above the label base rates (~0.4 for a random
    ranking) and price R^2 above 0.2 (0 for predicting the train mean)."""
    manifest = write_demo_manifest(tmp_path / "catalogue", 600, seed=4)
    common = ["shard", "--manifest", str(manifest), "--text", "title", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "ml"), "--task", "multilabel", "--label", "tags"]) == 0
    assert main([*common, "--out", str(tmp_path / "reg"), "--task", "regression", "--targets", "price"]) == 0
    flags = [*TINY_FLAGS[:1], "--batch-size", "32", *TINY_FLAGS[3:], "--epochs", "4"]
    for kind in ("ml", "reg"):
        task = "multilabel" if kind == "ml" else "regression"
        assert main(["finetune", "--data", str(tmp_path / kind), "--task", task, "--out", str(tmp_path / f"run-{kind}"),
                     *flags]) == 0
    multilabel = json.loads((tmp_path / "run-ml" / "metrics.json").read_text())["test"]
    regression = json.loads((tmp_path / "run-reg" / "metrics.json").read_text())["test"]
    assert multilabel["map"] > 0.55, multilabel
    assert regression["r2"] > 0.2, regression
