"""`train.augment` in a run: training batches of stages where the image tower trains, never val/test nor a stage
whose image tower is frozen (cached); recorded in metrics.json. Resume exactness with augmentation: test_resume.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch

import mmfuse.finetune
from mmfuse.config import resolve
from mmfuse.data.augment import ImageAugment
from mmfuse.encoders import create_encoder
from mmfuse.errors import ConfigError
from mmfuse.finetune import finetune


def record_loaders(monkeypatch) -> list[tuple[str, ImageAugment | None]]:
    """Every loader the run makes, as (split, the augmentation it was given)."""
    made: list[tuple[str, ImageAugment | None]] = []
    original = mmfuse.finetune.make_loader

    def recording(info, split, preprocessors, batch_size, **kwargs):
        made.append((split, (kwargs.get("augment") or {}).get("image")))
        return original(info, split, preprocessors, batch_size, **kwargs)

    monkeypatch.setattr(mmfuse.finetune, "make_loader", recording)
    return made


def record_augmented_epochs(monkeypatch) -> list[int]:
    """The epoch of every image augmented."""
    epochs: list[int] = []
    original = ImageAugment.__call__

    def recording(self, image, key):
        epochs.append(self.epoch)
        return original(self, image, key)

    monkeypatch.setattr(ImageAugment, "__call__", recording)
    return epochs


@pytest.mark.parametrize("setting, policy", [("auto", "none"), ("trivial", "trivial"), ("none", "none")])
def test_a_training_image_tower_gets_augmented_train_batches_and_plain_val_test(tiny_layers, monkeypatch, setting,
                                                                                policy):
    made = record_loaders(monkeypatch)
    lines: list[str] = []
    layers = {**tiny_layers, "train": {**tiny_layers["train"], "augment": setting, "epochs": 1, "precision": "fp32"}}
    summary = finetune(resolve(layers), echo=lambda *a: lines.append(" ".join(map(str, a))))
    (train,) = [augment for split, augment in made if split == "train"]  # the random-init image tower trains (full)
    if policy == "none":
        assert train is None
    else:
        assert (train.policy, train.seed, train.epoch) == (policy, 0, 1)
    assert all(augment is None for split, augment in made if split != "train")  # val and test: never
    assert summary["recipe"]["augment"] == setting
    assert [s["augment"] for s in summary["recipe"]["stages"]] == [policy]
    assert f"mmfuse: image augmentation (train.augment {setting}): train {policy}" in lines
    # run_config.yaml holds the setting, so `--resume` augments as the interrupted run did
    assert f"augment: {setting}" in (Path(tiny_layers["out"]) / "run_config.yaml").read_text()


@pytest.fixture
def image_checkpoint(tmp_path) -> str:
    """A tiny ViT's weights as a local checkpoint: `timm-image` loads it as a pretrained tower."""
    encoder = create_encoder("tiny-image", width=16, layers=1, heads=2, image_size=32)
    path = tmp_path / "vit.safetensors"
    safetensors.torch.save_file(encoder.backbone.state_dict(), path)
    return str(path)


def test_lp_ft_augments_only_the_finetune_stage(tiny_layers, image_checkpoint, tmp_path: Path, monkeypatch):
    """The probe trains on cached features of unaugmented images: nothing to augment there."""
    image = {"name": "timm-image", "kwargs": {
        "model": "vit_tiny_patch16_224", "checkpoint": image_checkpoint, "image_size": 32, "patch_size": 8,
        "embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0, "global_pool": "avg", "class_token": False}}
    layers = {**tiny_layers, "model": {**tiny_layers["model"], "encoders": {**tiny_layers["model"]["encoders"],
                                                                            "image": image}},
              "train": {**tiny_layers["train"], "epochs": 1, "probe_epochs": 1, "precision": "fp32"}}
    epochs = record_augmented_epochs(monkeypatch)
    summary = finetune(resolve(layers), echo=lambda *_: None)
    assert summary["recipe"]["name"] == "lp-ft"
    assert [(s["name"], s["augment"]) for s in summary["recipe"]["stages"]] == [("probe", "none"),
                                                                                ("finetune", "light")]
    assert set(epochs) == {2} and len(epochs) == 96  # epoch 2, the finetune stage: each train image once


def test_unknown_augment_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="train.augment must be one of auto, none, light, trivial, got 'lite'") as err:
        resolve({"train": {"augment": "lite"}})
    assert "\n" not in str(err.value) and "light" in str(err.value)
