"""--init-from: a new run starts from a finished run's weights, keeps its labels and adds rows for new ones."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch
import yaml
from conftest import TINY_MODEL

from mmfuse.cli import main
from mmfuse.config import resolve
from mmfuse.data.info import DatasetInfo
from mmfuse.errors import ConfigError
from mmfuse.finetune import finetune
from mmfuse.train.checkpoint import load_checkpoint
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
