"""train.layer_decay, train.compile and train.tensorboard."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import pytest

from mmfuse.checkpoint import load_checkpoint
from mmfuse.config import resolve
from mmfuse.errors import ConfigError
from mmfuse.finetune import finetune
from mmfuse.tasks import create_model_and_task
from mmfuse.train.layer_decay import encoder_layers, layer_ids
from mmfuse.train.optim import param_groups


def test_layer_decay_scales_each_encoder_block_and_leaves_the_head(tiny_config):
    config = replace(tiny_config.model, labels=["a", "b"],
                     encoders={**tiny_config.model.encoders,
                               "text": replace(tiny_config.model.encoders["text"],
                                               kwargs={"width": 16, "layers": 3, "heads": 2})})
    model = create_model_and_task(config)[0]
    for encoder in model.encoders.values():
        encoder.pretrained = True  # encoder_lr is the rate of pretrained towers
    train = replace(tiny_config.train, lr=1e-3, encoder_lr=1e-4, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in param_groups(model, train) for p in g["params"]}
    text = model.encoders["text"]
    assert len(encoder_layers(text)) == 3
    named = dict(text.named_parameters())
    assert lr_of[id(named["backbone.embeddings.word_embeddings.weight"])] == pytest.approx(1e-4 * 0.5**4)
    for k in range(3):  # block k (0-based) is layer k + 1 of L = 3: factor 0.5 ** (3 - k)
        assert lr_of[id(named[f"backbone.encoder.layer.{k}.attention.self.query.weight"])] == pytest.approx(
            1e-4 * 0.5 ** (3 - k))
    image_ids, blocks = layer_ids(model.encoders["image"])
    assert blocks == 1 and image_ids["backbone.fc_norm.weight"] == 2  # after the blocks: full rate
    assert lr_of[id(model.encoders["image"].backbone.fc_norm.weight)] == pytest.approx(1e-4)
    assert lr_of[id(model.head.linear.weight)] == 1e-3 and lr_of[id(next(model.fusion.parameters()))] == 1e-3
    plain = {id(p): g["lr"] for g in param_groups(model, replace(train, layer_decay=None)) for p in g["params"]}
    assert set(plain.values()) == {1e-3, 1e-4}


def test_layer_decay_must_be_a_fraction():
    with pytest.raises(ConfigError, match="train.layer_decay must be in"):
        resolve({"train": {"layer_decay": 1.5}})


def test_tensorboard_missing_is_a_clear_message_not_an_error(tiny_layers, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    lines: list[str] = []
    layers = {**tiny_layers, "train": {**tiny_layers["train"], "epochs": 1, "max_steps": 2, "tensorboard": True}}
    summary = finetune(resolve(layers), echo=lines.append)
    assert summary["steps"] == 2
    assert any("tensorboard package is not installed" in line and "mmfuse[tensorboard]" in line for line in lines)


def test_tensorboard_gets_every_metrics_record(tiny_layers, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    layers = {**tiny_layers, "train": {**tiny_layers["train"], "tensorboard": True}}
    finetune(resolve(layers), echo=lambda *_: None)
    out = tmp_path / "run"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    epochs = [r for r in records if "train_loss" in r]
    val = events.Scalars("epoch/val_accuracy")
    assert [(e.step, e.value) for e in val] == [(r["step"], pytest.approx(r["val_accuracy"])) for r in epochs]
    steps = [r for r in records if "loss" in r]
    assert [e.step for e in events.Scalars("train/loss")] == [r["step"] for r in steps]


@pytest.mark.slow
def test_compiled_run_trains_and_saves_plain_checkpoints(tiny_layers, tmp_path):
    layers = {**tiny_layers, "train": {**tiny_layers["train"], "epochs": 1, "max_steps": 3, "compile": True}}
    summary = finetune(resolve(layers), echo=lambda *_: None)
    assert summary["steps"] == 3
    model, _, _ = load_checkpoint(tmp_path / "run" / "checkpoints" / "best")  # names without a compile prefix
    assert not any("_orig_mod" in name for name in model.state_dict())
