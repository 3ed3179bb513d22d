"""--init-from: a new run starts from a finished run's weights, keeps its labels and adds rows for new ones."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_MODEL

from mmfuse.checkpoint import load_checkpoint
from mmfuse.cli import main
from mmfuse.config import resolve
from mmfuse.data.demo_manifest import write_demo_manifest
from mmfuse.data.info import DatasetInfo
from mmfuse.errors import ConfigError
from mmfuse.finetune import finetune
from mmfuse.inference import load
from mmfuse.train.init_from import init_from_run


@pytest.fixture(scope="module")
def source_run(demo_shards, tmp_path_factory):
    """A finished 1-epoch tiny run on the demo shards."""
    out = tmp_path_factory.mktemp("source") / "run"
    layers = {"model": TINY_MODEL, "data": {"path": str(demo_shards), "batch_size": 16, "eval_batch_size": 16},
              "train": {"epochs": 1, "progress": False}, "out": str(out)}
    finetune(resolve(layers), echo=lambda *_: None)
    return out


@pytest.fixture
def relabelled(demo_shards, tmp_path):
    """The demo shards with their last label renamed: one new label, one of the run's labels absent."""
    root = shutil.copytree(demo_shards, tmp_path / "relabelled")
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"][-1] = "hexagon-glass"
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_head_rows_move_by_label_and_new_labels_get_new_rows(source_run, relabelled, tiny_config):
    old, old_config, _ = load_checkpoint(source_run / "checkpoints" / "best")
    info = DatasetInfo.load(relabelled)
    model, config, summary = init_from_run(source_run, replace(tiny_config.model, labels=info.labels))
    assert config.labels == [*info.labels, old_config.labels[-1]]  # data order, then the run's missing label
    assert summary["new"] == ["hexagon-glass"] and len(summary["kept"]) == len(old_config.labels)
    for row, label in enumerate(config.labels):
        if label in old_config.labels:
            torch.testing.assert_close(model.head.linear.weight[row],
                                       old.head.linear.weight[old_config.labels.index(label)])
    new_row = config.labels.index("hexagon-glass")
    assert not any(torch.equal(model.head.linear.weight[new_row], w) for w in old.head.linear.weight)
    head = {"head.linear.weight", "head.linear.bias"}
    for name, value in old.state_dict().items():
        if name not in head:
            torch.testing.assert_close(model.state_dict()[name], value, msg=name)


def test_cli_init_from_trains_on_new_shards(source_run, relabelled, tmp_path, tiny_layers, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": tiny_layers["model"]}))
    out = tmp_path / "next"
    assert main(["finetune", "--config", str(config), "--data", str(relabelled), "--init-from", str(source_run),
                 "--epochs", "1", "--max-steps", "2", "--no-progress", "--out", str(out)]) == 0
    assert "1 new: hexagon-glass" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["labels"][-2:] == ["hexagon-glass", "triangle-metal"] and len(metrics["labels"]) == 7
    assert metrics["test"]["count"] == DatasetInfo.load(relabelled).count("test")
    model, saved, _ = load_checkpoint(out / "checkpoints" / "best")
    assert saved.labels == metrics["labels"] and model.head.linear.weight.shape[0] == 7


def test_different_modalities_or_encoders_are_clear_errors(source_run, tiny_layers, tmp_path, capsys):
    text_only = {**tiny_layers, "model": {**tiny_layers["model"], "modalities": ["text"]},
                 "train": {**tiny_layers["train"], "init_from": str(source_run)}}
    with pytest.raises(ConfigError, match="model.modalities differs: this run has \\['text'\\]"):
        finetune(resolve(text_only), echo=lambda *_: None)
    wider = {**tiny_layers, "train": {**tiny_layers["train"], "init_from": str(source_run)}}
    wider["model"] = {**tiny_layers["model"], "encoders": {
        **tiny_layers["model"]["encoders"], "text": {"name": "tiny-text", "kwargs": {"width": 32, "layers": 1}}}}
    with pytest.raises(ConfigError, match="model.encoders.text.kwargs.width differs: this run has 32, the "
                                          "checkpoint 16"):
        finetune(resolve(wider), echo=lambda *_: None)
    assert main(["finetune", "--init-from", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "no checkpoint there" in capsys.readouterr().err


TINY_FLAGS = ["--no-progress", "--batch-size", "16", "--set", "model.dim=32", "--set", "train.weight_decay=0",
              "--set", "model.encoders.text.kwargs.width=16", "--set", "model.encoders.text.kwargs.layers=1",
              "--set", "model.encoders.image.kwargs.width=16", "--set", "model.encoders.image.kwargs.layers=1",
              "--set", "model.encoders.image.kwargs.image_size=32"]


@pytest.fixture(scope="module")
def task_data(tmp_path_factory) -> dict[str, Path]:
    """The demo catalogue (96 items, with an extra `rank` column) sharded as multilabel tags and as regression
    targets `price,rank` (source) and `stock,price` (new data: one target new, one the data lacks)."""
    root = tmp_path_factory.mktemp("init-tasks")
    manifest = write_demo_manifest(root / "catalogue", 96, seed=5)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for i, row in enumerate(rows):
        row["rank"], row["stock"] = float(i % 7), float(3 * (i % 5) + 1)
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = ["shard", "--manifest", str(manifest), "--text", "title", "--no-progress",
              "--fractions", "train=0.6,val=0.2,test=0.2"]
    out = {}
    for name, extra in (("multilabel", ["--task", "multilabel", "--label", "tags"]),
                        ("regression", ["--task", "regression", "--targets", "price,rank"]),
                        ("regression-new", ["--task", "regression", "--targets", "stock,price"])):
        out[name] = root / name
        assert main([*common, "--out", str(out[name]), *extra]) == 0
    return out


def _finetune(data: Path, out: Path, task: str, *extra: str) -> dict:
    assert main(["finetune", "--data", str(data), "--task", task, "--out", str(out), "--epochs", "1",
                 "--max-steps", "3", *TINY_FLAGS, *extra]) == 0
    return json.loads((out / "metrics.json").read_text())


def _head(run: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    model, config, _ = load_checkpoint(run / "checkpoints" / "last")
    return model.head.linear.weight.detach(), model.head.linear.bias.detach(), config.labels


def test_multilabel_init_from_keeps_untrained_rows_of_labels_the_data_lacks(task_data, tmp_path):
    source = tmp_path / "source"
    _finetune(task_data["multilabel"], source, "multilabel")
    relabelled = shutil.copytree(task_data["multilabel"], tmp_path / "relabelled")
    meta = json.loads((relabelled / "dataset.json").read_text())
    gone, meta["labels"][0] = meta["labels"][0], "lacquered"  # index 0 now means a new label
    (relabelled / "dataset.json").write_text(json.dumps(meta))
    metrics = _finetune(relabelled, tmp_path / "next", "multilabel", "--init-from", str(source))
    assert metrics["labels"] == [*meta["labels"], gone]
    w0, b0, old_labels = _head(source)
    w1, b1, labels = _head(tmp_path / "next")
    row, old_row = labels.index(gone), old_labels.index(gone)
    # the data has no column for it: its row is carried over and not trained (no weight decay in this run)
    assert torch.equal(w1[row], w0[old_row]) and torch.equal(b1[row], b0[old_row])
    kept = labels.index(meta["labels"][1])
    assert not torch.equal(w1[kept], w0[old_labels.index(meta["labels"][1])])  # the data's labels did train
    assert metrics["test"]["count"] == DatasetInfo.load(relabelled).count("test")


def test_regression_init_from_merges_targets_and_their_standardisation(task_data, tmp_path):
    source = tmp_path / "source"
    _finetune(task_data["regression"], source, "regression")
    metrics = _finetune(task_data["regression-new"], tmp_path / "next", "regression", "--init-from", str(source))
    assert metrics["labels"] == ["stock", "price", "rank"]
    old, new = DatasetInfo.load(task_data["regression"]), DatasetInfo.load(task_data["regression-new"])
    _, config, _ = load_checkpoint(tmp_path / "next" / "checkpoints" / "best")
    # the run's units for the targets it knew, the data's for the new one
    assert config.task_kwargs["target_mean"] == [new.target_stats["mean"][0], old.target_stats["mean"][0],
                                                 old.target_stats["mean"][1]]
    assert config.task_kwargs["target_std"][2] == old.target_stats["std"][1]
    w0, b0, _ = _head(source)
    w1, b1, _ = _head(tmp_path / "next")
    assert torch.equal(w1[2], w0[1]) and torch.equal(b1[2], b0[1])  # 'rank': not in the data, not trained
    assert not torch.equal(w1[1], w0[0])  # 'price' trained on
    assert set(metrics["test"]["per_target"]) == {"stock", "price"}  # scored on the data's targets only
    predicted = load(tmp_path / "next").predict([{"text": "an oak toy"}])
    assert list(predicted[0]) == ["stock", "price", "rank"]


def test_contrastive_init_from_loads_every_weight(demo_shards, tmp_path):
    source = tmp_path / "source"
    assert main(["finetune", "--data", str(demo_shards), "--task", "contrastive", "--out", str(source),
                 "--epochs", "1", "--max-steps", "2", *TINY_FLAGS]) == 0
    old, old_config, _ = load_checkpoint(source / "checkpoints" / "last")
    config = replace(old_config, dropout=0.0)
    model, new_config, summary = init_from_run(source, config)
    assert new_config.task == "contrastive" and model.head is None and summary["new"] == []
    for name, value in old.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, msg=name)


def test_a_different_task_is_a_clear_error(source_run, tiny_config):
    with pytest.raises(ConfigError, match="model.task differs: this run has 'multilabel', the checkpoint "
                                          "'classification'"):
        init_from_run(source_run, replace(tiny_config.model, task="multilabel"))
