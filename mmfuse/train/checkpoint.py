"""Checkpoints: `model.safetensors` + `config.json` (the `ModelConfig`) + encoder assets, written atomically.

    <dir>/model.safetensors   weights (safetensors: no pickle)
    <dir>/config.json         {"model": ModelConfig, "asset_kwargs": {modality: [kwarg, ...]}, ...}
    <dir>/assets/<modality>/  tokenizer / backbone config an encoder needs to be rebuilt offline
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import safetensors.torch

from ..encoders.registry import split_encoder_name
from ..errors import ConfigError
from ..model import EncoderSpec, FusionModel, ModelConfig, build_model
from .state import write_state

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def save_checkpoint(model: FusionModel, config: ModelConfig, directory: str | Path,
                    extra: dict[str, Any] | None = None, train_state: dict[str, Any] | None = None,
                    state_dict: dict[str, Any] | None = None) -> Path:
    """Write weights, config, assets (and a resumable `train_state`) to `directory`, atomically.

    `state_dict` (e.g. full weights gathered from an FSDP-sharded model) is saved instead of `model`'s own tensors.

    Everything is written into a temporary sibling directory which then replaces `directory` by renames, so a
    crash at any point leaves either the old or the new checkpoint (`resolve_checkpoint_dir` finds it).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    _recover(directory)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        encoders, asset_kwargs = {}, {}
        for m in config.modalities:
            spec = config.encoders[m]
            assets = tmp / "assets" / m
            assets.mkdir(parents=True)
            written = model.encoders[m].save_assets(str(assets))
            name, implied = split_encoder_name(spec.name)
            kwargs = {**implied, **spec.kwargs}
            for key, path in written.items():
                kwargs[key] = os.path.relpath(path, tmp)
            asset_kwargs[m] = sorted(written)
            encoders[m] = EncoderSpec(name=name, kwargs=kwargs, pretrained=False)
        saved = replace(config, encoders=encoders)
        meta = {"model": saved.to_dict(), "asset_kwargs": asset_kwargs, **(extra or {})}
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2))
        if state_dict is not None:
            safetensors.torch.save_file({k: v.contiguous() for k, v in state_dict.items()}, str(tmp / WEIGHTS))
        else:
            safetensors.torch.save_model(model, str(tmp / WEIGHTS))
        if train_state is not None:
            write_state(tmp, train_state)
        old = _previous(directory)
        shutil.rmtree(old, ignore_errors=True)
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _previous(directory: Path) -> Path:
    return directory.with_name(f".{directory.name}-old")


def _recover(directory: Path) -> None:
    """Before a save: put back a checkpoint a crash left between the two renames, and remove the temporary
    directories that a killed save left behind (they were never a checkpoint)."""
    old = _previous(directory)
    if not directory.exists() and (old / CONFIG).exists():
        os.replace(old, directory)
    for stale in directory.parent.glob(".*-*"):
        if stale.is_dir() and not stale.name.endswith("-old"):
            shutil.rmtree(stale, ignore_errors=True)


def resolve_checkpoint_dir(directory: str | Path) -> Path:
    """`directory`, or the previous checkpoint if a crash came between the two renames of a save."""
    directory = Path(directory)
    if not directory.exists() and (_previous(directory) / CONFIG).exists():
        return _previous(directory)
    return directory


def read_checkpoint_config(directory: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """The `ModelConfig` of a checkpoint with asset paths made absolute, and the rest of config.json."""
    directory = resolve_checkpoint_dir(directory)
    file = directory / CONFIG
    if not file.exists():
        raise ConfigError(f"{directory} is not an mmfuse checkpoint: {CONFIG} is missing")
    meta = json.loads(file.read_text())
    config = ModelConfig(**meta.pop("model"))
    for m, keys in meta.pop("asset_kwargs", {}).items():
        for key in keys:
            config.encoders[m].kwargs[key] = str(directory / config.encoders[m].kwargs[key])
    return config, meta


def load_checkpoint(directory: str | Path) -> tuple[FusionModel, ModelConfig, dict[str, Any]]:
    """Rebuild the model of a checkpoint directory and load its weights (strict)."""
    directory = resolve_checkpoint_dir(directory)
    config, meta = read_checkpoint_config(directory)
    model = build_model(config)
    weights = directory / WEIGHTS
    if not weights.exists():
        raise ConfigError(f"{directory} has no {WEIGHTS}")
    missing, unexpected = safetensors.torch.load_model(model, str(weights), strict=False)
    if missing or unexpected:
        raise ConfigError(f"{weights} does not match its config: missing {list(missing)[:3]}, "
                          f"unexpected {list(unexpected)[:3]}")
    return model, config, meta
