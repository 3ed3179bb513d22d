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
import torch
from safetensors import SafetensorError

from .config import from_dict
from .encoders.registry import WEIGHT_SOURCES, saved_kwargs, split_encoder_name
from .errors import ConfigError
from .model import FusionModel
from .model_config import EncoderSpec, ModelConfig
from .names import inside

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def save_checkpoint(model: FusionModel, config: ModelConfig, directory: str | Path,
                    extra: dict[str, Any] | None = None, train_state: dict[str, Any] | None = None,
                    state_dict: dict[str, Any] | None = None, same_weights: str | Path | None = None) -> Path:
    """Write weights, config, assets (and a resumable `train_state`) to `directory`, atomically.

    `state_dict` (e.g. full weights gathered from an FSDP-sharded model) is saved instead of `model`'s own tensors.
    `same_weights`: a checkpoint directory known to hold these very weights; its `model.safetensors` is hard-linked
    instead of written again (checkpoint files are replaced, never rewritten in place), or copied where the file
    system has no hard links.

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
            kwargs = {k: v for k, v in {**implied, **spec.kwargs}.items() if k not in WEIGHT_SOURCES}
            for key, path in written.items():
                kwargs[key] = os.path.relpath(path, tmp)
            asset_kwargs[m] = sorted(written)
            encoders[m] = EncoderSpec(name=name, kwargs=kwargs, pretrained=False)
        saved = replace(config, encoders=encoders)
        meta = {"model": saved.to_dict(), "asset_kwargs": asset_kwargs, **(extra or {})}
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2))
        if same_weights is not None and (Path(same_weights) / WEIGHTS).exists():
            _link_or_copy(Path(same_weights) / WEIGHTS, tmp / WEIGHTS)
        elif state_dict is not None:
            safetensors.torch.save_file({k: v.contiguous() for k, v in state_dict.items()}, str(tmp / WEIGHTS))
        else:
            safetensors.torch.save_model(model, str(tmp / WEIGHTS))
        if train_state is not None:
            from .train.state import write_state  # training only: loading never imports mmfuse.train

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


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


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
    try:
        meta = json.loads(file.read_text())
        config = from_dict(ModelConfig, meta.pop("model"), "model")  # the same validation as a run config's
        assets = {m: set(keys) for m, keys in meta.pop("asset_kwargs", {}).items()}
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError, AttributeError) as err:
        raise ConfigError(f"{file} is corrupt ({type(err).__name__}); rewrite it or use another run") from None
    except ConfigError as err:
        raise ConfigError(f"{file} is corrupt: {err}") from None
    config.encoders = {m: _trusted_spec(file, directory, m, config.encoders[m], assets.get(m, set()))
                       for m in config.modalities}
    return config, meta


def _trusted_spec(file: Path, directory: Path, m: str, spec: EncoderSpec, assets: set[str]) -> EncoderSpec:
    """A saved encoder spec as it may be built from a directory that came from elsewhere: never `pretrained`,
    only the builder's own options (`saved_kwargs`), and the asset paths resolved inside `directory`."""
    where = f"{file}: model.encoders.{m}"
    if spec.pretrained is not False:
        raise ConfigError(f"{where}.pretrained: a saved run is rebuilt from its own weights; it must be false")
    name, implied = split_encoder_name(spec.name)
    kwargs = saved_kwargs(name, {**implied, **spec.kwargs}, assets, f"{where}.kwargs")
    for key in assets & set(kwargs):
        path = inside(directory, kwargs[key])
        if path is None:
            raise ConfigError(f"{where}.kwargs.{key}: {str(kwargs[key])[:60]!r} is not a path inside {directory}")
        kwargs[key] = str(path)
    return EncoderSpec(name=name, kwargs=kwargs, pretrained=False)


def load_checkpoint(directory: str | Path) -> tuple[FusionModel, ModelConfig, dict[str, Any]]:
    """Rebuild the model of a checkpoint directory and load its weights (strict)."""
    directory = resolve_checkpoint_dir(directory)
    config, meta = read_checkpoint_config(directory)
    from .tasks import create_model_and_task

    model, _ = create_model_and_task(config)
    weights = directory / WEIGHTS
    if not weights.exists():
        raise ConfigError(f"{directory} has no {WEIGHTS}")
    try:
        missing, unexpected = safetensors.torch.load_model(model, str(weights), strict=False)
    except SafetensorError:
        raise ConfigError(f"{weights} is corrupt (not a readable safetensors file); rewrite it or use another "
                          f"run") from None
    except RuntimeError:  # a tensor of another shape than its config.json builds
        raise ConfigError(f"{weights} does not match its config: a tensor has another shape") from None
    if missing or unexpected:
        raise ConfigError(f"{weights} does not match its config: missing {list(missing)[:3]}, "
                          f"unexpected {list(unexpected)[:3]}")
    return model, config, meta


def read_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint directory by parameter name, without building its model (resume, the final
    test of the best epoch, `--init-from`)."""
    weights = resolve_checkpoint_dir(directory) / WEIGHTS
    if not weights.exists():
        raise ConfigError(f"{weights.parent} has no {WEIGHTS}")
    try:
        return safetensors.torch.load_file(str(weights))
    except (SafetensorError, OSError):
        raise ConfigError(f"{weights} is corrupt (not a readable safetensors file); rewrite it or use another "
                          f"run") from None
