"""The search space of `mmfuse tune`: dotted config keys -> Optuna distributions.

A space file is YAML mapping each dotted run-config key to its distribution:

    model.dropout: {type: float, low: 0.0, high: 0.4}
    train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    model.dim: {type: categorical, choices: [64, 128, 256]}
    train.epochs: {type: int, low: 2, high: 8}

Without one, `default_space(config)` searches the fusion, width, dropout, learning rates, weight decay and epochs
around the base run config's own values (which the space always contains, so the base runs as trial 0).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import ENCODER_LR_DIVISOR, RunConfig, load_yaml
from ..errors import ConfigError, did_you_mean

TYPES = ("float", "int", "categorical")
SPEC_KEYS = ("type", "low", "high", "log", "step", "choices")


@dataclass(frozen=True)
class Param:
    """One searched config key and its distribution."""

    key: str
    """Dotted run-config key, e.g. train.lr."""
    type: str
    """float | int | categorical."""
    low: float | None = None
    high: float | None = None
    log: bool = False
    """Sample on a log scale (float and int; low > 0)."""
    step: float | None = None
    """Grid step of an int or (not log) float distribution; None: continuous (int: 1)."""
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """The value an `optuna.Trial` suggests for this key."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        """Whether `value` lies in this distribution (the base config's value, to enqueue it as trial 0)."""
        if self.type == "categorical":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type == "int" and value != int(value):
            return False
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        """The space-file form of this parameter."""
        if self.type == "categorical":
            return {"type": self.type, "choices": list(self.choices)}
        spec = {"type": self.type, "low": self.low, "high": self.high, "log": self.log}
        return {**spec, "step": self.step} if self.step is not None else spec


def parse_param(key: str, spec: Any, where: str = "space") -> Param:
    """One `key: {type, low, high, log, step, choices}` entry of a space file, checked; `ConfigError` names it."""
    check_key(key, where)
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: {key} must be a mapping like {{type: float, low: 0.0, high: 1.0}}, got {spec!r}")
    for name in spec:
        if name not in SPEC_KEYS:
            raise ConfigError(f"{where}: {key}: unknown field '{name}'{did_you_mean(str(name), SPEC_KEYS)}; "
                              f"use {', '.join(SPEC_KEYS)}")
    kind = spec.get("type")
    if kind not in TYPES:
        raise ConfigError(f"{where}: {key}: type must be one of {', '.join(TYPES)}, got {kind!r}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: {key}: a categorical needs a non-empty list of choices")
        if any(c is not None and not isinstance(c, (bool, int, float, str)) for c in choices):
            raise ConfigError(f"{where}: {key}: choices must be numbers, strings, booleans or null")
        return Param(key, kind, choices=tuple(choices))
    low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
    for name, value in (("low", low), ("high", high), ("step", step)):
        if value is None and name == "step":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key}: {name} must be a number, got {value!r}")
        if kind == "int" and value != int(value):
            raise ConfigError(f"{where}: {key}: {name} of an int must be a whole number, got {value!r}")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: {key}: log must be true or false, got {log!r}")
    if not low < high:
        raise ConfigError(f"{where}: {key}: low must be below high, got low {low}, high {high}")
    if log and low <= 0:
        raise ConfigError(f"{where}: {key}: a log scale needs low > 0, got {low}")
    if step is not None and (step <= 0 or (log and kind == "float")):
        raise ConfigError(f"{where}: {key}: step must be > 0 and cannot join log for a float")
    return Param(key, kind, float(low), float(high), log, None if step is None else float(step))


def check_key(key: str, where: str = "space") -> None:
    """Refuse a dotted key that names no run-config field (a key inside a mapping field, e.g.
    model.fusion_kwargs.rank or train.tower_lr.text, is checked when a trial's config is resolved)."""
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{where}: keys must be dotted config keys like train.lr, got {key!r}")
    cls: Any = RunConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            if typing.get_origin(cls) is dict or cls is Any:  # a mapping field: any key, its value's type next
                cls = typing.get_args(cls)[1] if typing.get_args(cls) else Any
                continue
            raise ConfigError(f"{where}: unknown config key '{key}': {'.'.join(parts[:i])} has no sub-keys")
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        if part not in names:
            raise ConfigError(f"{where}: unknown config key '{key}'{did_you_mean(part, names)}")
        hint = typing.get_type_hints(cls)[part]
        options = [a for a in typing.get_args(hint) if a is not type(None)] \
            if typing.get_origin(hint) in (typing.Union, types.UnionType) else [hint]
        cls = options[0] if len(options) == 1 else hint
    if dataclasses.is_dataclass(cls):
        raise ConfigError(f"{where}: config key '{key}' is a section; search one of its fields")


def load_space(path: str | Path) -> list[Param]:
    """The parameters of a space file (see the module docstring); `ConfigError` names a wrong key or field."""
    data = load_yaml(path)
    if not data:
        raise ConfigError(f"--space {path} holds no parameters (a mapping of dotted keys to distributions)")
    return [parse_param(str(key), spec, where=f"--space {path}") for key, spec in data.items()]


def default_space(config: RunConfig) -> list[Param]:
    """The default search around `config`: fusion (with two or more modalities, when the task uses it and no
    fusion_kwargs pin one), dim, dropout, lr, encoder_lr (when a pretrained tower trains), weight_decay, epochs and
    probe_epochs (under an lp-ft recipe). Every range holds the base config's own value."""
    from ..fusion import list_fusions
    from ..tasks import task_class

    model, train = config.model, config.train
    space: list[Param] = []
    if len(model.modalities) > 1 and not model.fusion_kwargs and _fuses(task_class(model.task)):
        space.append(Param("model.fusion", "categorical", choices=tuple(sorted({*list_fusions(), model.fusion}))))
    dims = sorted({max(8, model.dim // 2), model.dim, model.dim * 2})
    space.append(Param("model.dim", "categorical", choices=tuple(dims)))
    space.append(Param("model.dropout", "float", 0.0, max(0.5, model.dropout)))
    space.append(Param("train.lr", "float", train.lr / 10, train.lr * 10, log=True))
    if _pretrained_tower_trains(config):
        ref = train.encoder_lr or train.lr / ENCODER_LR_DIVISOR
        space.append(Param("train.encoder_lr", "float", ref / 10, ref * 10, log=True))
    space.append(Param("train.weight_decay", "float", 0.0, max(0.2, train.weight_decay)))
    if train.epochs > 1:
        space.append(Param("train.epochs", "int", max(1, train.epochs // 2), train.epochs * 2))
    if recipe(config) == "lp-ft" and train.probe_epochs > 1:
        space.append(Param("train.probe_epochs", "int", max(1, train.probe_epochs // 4), train.probe_epochs))
    return space


def pretrained(config: RunConfig) -> list[str]:
    """The modalities whose tower will hold pretrained weights, from the config alone: its spec asks for them and
    its encoder is not registered `random_init` (`mmfuse.encoders.registry.loads_pretrained_weights`)."""
    from ..encoders.registry import loads_pretrained_weights

    specs = config.model.encoders
    return [m for m in config.model.modalities
            if m in specs and loads_pretrained_weights(specs[m].name, specs[m].pretrained)]


def recipe(config: RunConfig) -> str:
    """`train.recipe` as a run resolves it (`mmfuse.train.recipe.choose_recipe`), from the config alone."""
    from ..train.recipe import choose_recipe

    return choose_recipe(config.train, pretrained(config))[0]


def _pretrained_tower_trains(config: RunConfig) -> bool:
    """A pretrained tower learns at `train.encoder_lr` in some stage: not frozen (the frozen recipe freezes them
    all), or only its top layers or adapters train. Random-init towers learn at `lr`."""
    train = config.train
    towers = [m for m in pretrained(config) if m not in train.freeze or train.unfreeze_top > 0
              or m in config.model.adapters]
    return bool(towers) and recipe(config) != "frozen"


def _fuses(task: type) -> bool:
    """Whether a task trains a head on the fused embedding (a contrastive task has none, so its fusion is idle)."""
    try:
        return task.build_head(object.__new__(task), 8, 0.0) is not None
    except Exception:  # a head built from the task's labels or options: it has one
        return True


def nested(values: dict[str, Any]) -> dict[str, Any]:
    """{'train.lr': 1e-3} -> {'train': {'lr': 1e-3}} (a config layer)."""
    layer: dict[str, Any] = {}
    for key, value in values.items():
        *sections, name = key.split(".")
        node = layer
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    return layer


def dotted(layer: dict[str, Any], key: str) -> Any:
    """The value at a dotted key of a resolved config dict (None where absent)."""
    node: Any = layer
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def dump_space(params: list[Param]) -> str:
    """`params` as a space file (YAML), e.g. to start a custom space from the default one."""
    return yaml.safe_dump({p.key: p.to_dict() for p in params}, sort_keys=False)
