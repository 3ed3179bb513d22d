"""Model presets: small JSON files in `mmfuse/model_configs/` holding the `model` section of a run config
(open_clip's `model_configs/*.json`). `tiny_*` presets build random-init models in a second, for tests."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from .model import FusionModel, ModelConfig


def _preset_files() -> dict[str, Any]:
    folder = resources.files("mmfuse") / "model_configs"
    return {f.name[:-5]: f for f in folder.iterdir() if f.name.endswith(".json")}


def list_presets() -> list[str]:
    """Names of the packaged model presets."""
    return sorted(_preset_files())


def load_preset(name: str) -> dict[str, Any]:
    """A preset's `model` section by name (`mmfuse list`) or from a JSON file path. Raises `ConfigError`."""
    files = _preset_files()
    if name in files:
        text, where = files[name].read_text(encoding="utf-8"), f"preset '{name}'"
    elif name.endswith(".json") and Path(name).exists():
        text, where = Path(name).read_text(encoding="utf-8"), name
    else:
        raise ConfigError(f"unknown model preset '{name}'{did_you_mean(name, files)}; known: {', '.join(sorted(files))}"
                          " (or pass a path to a .json file)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or "modalities" not in data:
        raise ConfigError(f"{where} must be a JSON object with at least 'modalities' (a run config's model section)")
    data.pop("description", None)
    return data


def preset_config(name: str) -> ModelConfig:
    """A preset's `ModelConfig`, validated as a run config's `model` section is (keys it leaves out keep their
    defaults: the demo presets take the default towers)."""
    from .config import resolve

    try:
        return resolve({"model": load_preset(name)}).model
    except ConfigError as err:
        raise ConfigError(f"preset '{name}': {err}") from None


def describe_preset(name: str) -> str:
    """The preset's one-line `description` field ('' if it has none)."""
    return str(json.loads(_preset_files()[name].read_text(encoding="utf-8")).get("description", ""))


def build_untrained(config: ModelConfig, seed: int = 0) -> FusionModel:
    """The embedding part of `config`'s model, without head: its encoders (pretrained where `config` says so; with
    their adapters) and projections and fusion initialised from `seed` (the global RNG is left as it was).

    The weights are those `mmfuse.load(preset)` has always had, from when a preset carried a placeholder two-class
    head: that head's draws from the RNG (after the fusion's, before the projections') are still made, so a preset
    keeps embedding alike.
    """
    import torch

    from .model import FusionModel, build_parts

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoders, fusion = build_parts(config)
        torch.nn.Linear(config.dim, 2)  # the placeholder head's draws (see above), then thrown away
        return FusionModel(encoders, fusion, None, modality_dropout=config.modality_dropout)
