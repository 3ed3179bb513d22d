"""Freezing towers, per-tower learning rates and LoRA adapters (peft)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from mmfuse.checkpoint import load_checkpoint, save_checkpoint
from mmfuse.config import resolve
from mmfuse.data.info import DatasetInfo
from mmfuse.data.loader import make_loader
from mmfuse.errors import ConfigError
from mmfuse.finetune import finetune
from mmfuse.tasks import create_model_and_task
from mmfuse.train.freeze import apply_freeze
from mmfuse.train.optim import tower_rates
from mmfuse.train.trainer import Trainer


def test_frozen_tower_does_not_change_while_the_rest_trains(tiny_layers):
    layers = {**tiny_layers, "train": {**tiny_layers["train"], "epochs": 1, "freeze": ["image"]}}
    config = resolve(layers)
    summary = finetune(config, echo=lambda *_: None)
    model, _, _ = load_checkpoint(f"{config.out}/checkpoints/last")
    torch.manual_seed(config.train.seed)
    init = create_model_and_task(replace(config.model, labels=summary["labels"]))[0]  # the same seeded initialisation
    for name, p in model.encoders["image"].state_dict().items():
        torch.testing.assert_close(p, init.encoders["image"].state_dict()[name], msg=name)
    assert not torch.equal(model.head.linear.weight, init.head.linear.weight)
    assert summary["parameters"]["trainable"] < summary["parameters"]["total"]


def test_unfreeze_top_layers_and_tower_learning_rates(tiny_config):
    model, task = create_model_and_task(replace(tiny_config.model, labels=["a", "b"]))
    apply_freeze(model, ["text"], unfreeze_top=1)
    trainable = {n for n, p in model.encoders["text"].named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("backbone.encoder.layer.0.") for n in trainable)  # 1 layer: the top one
    model.encoders["text"].pretrained = True  # encoder_lr is the rate of pretrained towers
    cfg = replace(tiny_config.train, lr=1e-3, encoder_lr=1e-4, tower_lr={"image": 5e-5})
    trainer = Trainer(model, task, cfg, torch.device("cpu"), total_steps=10)
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs["head"] == 1e-3 and lrs["text"] == 1e-4 and lrs["image"] == 5e-5


def test_random_init_towers_learn_at_the_head_rate_pretrained_ones_at_encoder_lr(tiny_config):
    model = create_model_and_task(replace(tiny_config.model, labels=["a", "b"]))[0]
    model.encoders["image"].pretrained = True
    assert not model.encoders["text"].pretrained  # tiny-text: random init
    rates = tower_rates(model, replace(tiny_config.train, lr=1e-3, encoder_lr=3e-5))
    assert rates == {"head": 1e-3, "text": 1e-3, "image": 3e-5}  # the documented 3e-5 never slows a random tower
    default = tower_rates(model, replace(tiny_config.train, lr=1e-3, encoder_lr=None))
    assert default["image"] == pytest.approx(1e-3 / 20) and default["text"] == 1e-3
    named = tower_rates(model, replace(tiny_config.train, lr=1e-3, tower_lr={"text": 1e-4, "head": 5e-4}))
    assert named["text"] == 1e-4 and named["head"] == 5e-4


def test_unknown_tower_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown tower 'txt'"):
        resolve({"train": {"freeze": ["txt"]}})


def test_lora_trains_a_few_percent_of_the_tower_and_reloads(tiny_config, demo_shards, tmp_path):
    info = DatasetInfo.load(demo_shards)
    cfg = replace(tiny_config.model, labels=info.labels, adapters={"text": {"method": "lora", "r": 4}})
    model, task = create_model_and_task(cfg)
    text = model.encoders["text"]
    total = sum(p.numel() for p in text.parameters())
    trainable = [n for n, p in text.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert sum(p.numel() for n, p in text.named_parameters() if p.requires_grad) < 0.05 * total
    trainer = Trainer(model, task, replace(tiny_config.train, lr=1e-2), torch.device("cpu"), total_steps=40)
    batch = next(iter(make_loader(info, "train", model.preprocessors(), 16)))
    base = {n: p.clone() for n, p in text.named_parameters() if not p.requires_grad}
    first = trainer.train_step(batch).item()
    for _ in range(25):
        last = trainer.train_step(batch).item()
    assert last < 0.5 * first
    for n, p in text.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n  # the base model stays frozen
    save_checkpoint(model, cfg, tmp_path / "ckpt")
    loaded, loaded_cfg, _ = load_checkpoint(tmp_path / "ckpt")
    assert loaded_cfg.adapters == {"text": {"method": "lora", "r": 4}}
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(batch), loaded(batch))


def test_bad_adapter_options_are_config_errors(tiny_config):
    for adapters, message in (({"text": {"method": "dora"}}, "adapter method must be one of"),
                              ({"text": {"rank": 4}}, "unknown adapter option"),
                              ({"audio": {}}, "model.adapters names 'audio'")):
        with pytest.raises(ConfigError, match=message):
            create_model_and_task(replace(tiny_config.model, labels=["a", "b"], adapters=adapters))[0]


def test_grad_checkpointing_gives_the_same_gradients(tiny_config, demo_shards):
    info = DatasetInfo.load(demo_shards)
    cfg = replace(tiny_config.model, labels=info.labels, dropout=0.0)
    plain = create_model_and_task(cfg)[0].train()
    ckpt = create_model_and_task(cfg)[0].train()
    ckpt.load_state_dict(plain.state_dict())
    for encoder in ckpt.encoders.values():
        encoder.set_grad_checkpointing(True)
    assert ckpt.encoders["text"].grad_checkpointing
    assert ckpt.encoders["image"].backbone.grad_checkpointing
    batch = next(iter(make_loader(info, "train", plain.preprocessors(), 8)))
    for model in (plain, ckpt):
        for module in model.modules():  # no dropout: both see the same function
            if isinstance(module, torch.nn.Dropout) or "Dropout" in type(module).__name__:
                module.p = 0.0
        torch.nn.functional.cross_entropy(model(batch), batch["label"]).backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_random_init_encoders_are_known_from_their_registration_without_building_them():
    from mmfuse.encoders import create_encoder
    from mmfuse.encoders.registry import loads_pretrained_weights

    for name in ("tiny-text", "tiny-image", "tiny-audio", "logmel-stats", "small-cnn-audio"):
        assert not loads_pretrained_weights(name), name
    assert loads_pretrained_weights("hf-text:bert-base-uncased") and loads_pretrained_weights("minilm-l6")
    assert not loads_pretrained_weights("hf-text:bert-base-uncased", pretrained=False)
    assert create_encoder("logmel-stats").pretrained is False  # whatever `pretrained` create_encoder was given
