"""`register_encoder` / `create_encoder` / `list_encoders`."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from ..names import looks_like_path
from ..registry import Registry
from .base import Encoder

ENCODERS: Registry[Encoder] = Registry("encoder")


RANDOM_INIT: set[str] = set()
"""Encoders registered with `random_init=True`: they never hold pretrained weights (the `tiny-*` presets)."""


SMALL_DATA: dict[str, str] = {}
"""Encoder -> the random-init encoder registered to replace it, when it would train from scratch on a small split
(`register_encoder(small_data_for=...)`; `train.recipe: auto` swaps it, docs/recipes.md)."""
SMALL_DATA_CARRIED = ("width", "sample_rate", "n_mels", "max_seconds", "image_size")
"""Options of the replaced encoder that describe its input and output width; its replacement takes those it has
(the rest default)."""


def register_encoder(name: str, random_init: bool = False, small_data_for: tuple[str, ...] = ()
                     ) -> Callable[[Callable[..., Encoder]], Callable[..., Encoder]]:
    """Decorator: make an encoder class or builder available to `create_encoder(name)`. `random_init`: its weights
    are never pretrained, whatever `pretrained` it is given. `small_data_for`: encoders this one (random-init, with
    the inductive bias of small data) replaces when they would train from scratch on a small split."""
    if small_data_for and not random_init:
        raise ValueError(f"encoder '{name}': only a random-init encoder may replace others on small data")
    for replaced in small_data_for:
        if SMALL_DATA.get(replaced, name) != name:
            raise ValueError(f"encoder '{replaced}' already has a small-data replacement '{SMALL_DATA[replaced]}'")
    SMALL_DATA.update(dict.fromkeys(small_data_for, name))
    if random_init:
        RANDOM_INIT.add(name)
    return ENCODERS.register(name)


def small_data_replacement(name: str, kwargs: dict[str, Any], pretrained: bool = True
                           ) -> tuple[str, dict[str, Any]] | None:
    """The (name, kwargs) of the encoder registered to replace encoder `name` built with `kwargs` and `pretrained`,
    when that one would start from random weights and has a replacement, else None. The replacement keeps the input
    options (`SMALL_DATA_CARRIED`) its builder takes."""
    base = split_encoder_name(name)[0]
    if base not in SMALL_DATA or loads_pretrained_weights(name, pretrained) or WEIGHT_SOURCES & set(kwargs):
        return None
    target = SMALL_DATA[base]
    takes = inspect.signature(ENCODERS.get(target)).parameters
    return target, {k: v for k, v in kwargs.items() if k in SMALL_DATA_CARRIED and k in takes and v is not None}


def loads_pretrained_weights(name: str, pretrained: bool = True) -> bool:
    """Whether `create_encoder(name, pretrained)` gives an encoder holding pretrained weights, known without
    building it (a builder may still set True itself, e.g. `timm-image` given a local `checkpoint`)."""
    return pretrained and split_encoder_name(name)[0] not in RANDOM_INIT


def create_encoder(name: str, pretrained: bool = True, **kwargs: Any) -> Encoder:
    """Build a registered encoder.

    `name` may carry the backbone after a colon, timm style: `create_encoder("hf-text:bert-base-uncased")` is
    `create_encoder("hf-text", model="bert-base-uncased")`. `pretrained=False` builds the architecture only.
    The encoder's `pretrained` attribute says whether it holds pretrained weights: False for an encoder registered
    `random_init`, else what the builder set (a local `checkpoint` sets True), else `pretrained`.
    """
    name, implied = split_encoder_name(name)
    encoder = ENCODERS.get(name)(pretrained=pretrained, **{**implied, **kwargs})
    if name in RANDOM_INIT:
        encoder.pretrained = False
    elif "pretrained" not in vars(encoder):
        encoder.pretrained = bool(pretrained)
    return encoder


def list_encoders() -> list[str]:
    """Names of all registered encoders."""
    return ENCODERS.names()


def split_encoder_name(name: str) -> tuple[str, dict[str, Any]]:
    """'hf-text:bert-base-uncased' -> ('hf-text', {'model': 'bert-base-uncased'})."""
    if ":" in name:
        base, model = name.split(":", 1)
        return base, {"model": model}
    return name, {}


WEIGHT_SOURCES = frozenset({"checkpoint"})
"""Builder arguments that load weights from a file; a saved run's weights are its own `model.safetensors`."""
_UNSAFE_EXTRA = re.compile(r"pretrained|checkpoint|cache|(^|_)(path|file|url|dir|hub|repo)$", re.IGNORECASE)
"""Names of backend keyword arguments (timm's `**kwargs`) never taken from a saved run: they load files."""


def saved_kwargs(name: str, kwargs: dict[str, Any], assets: set[str], where: str) -> dict[str, Any]:
    """The keyword arguments of encoder `name` (no ':') that a saved run's `config.json` may pass, checked.

    The allow-list is the registered builder's signature: its named parameters, less `pretrained` and the weight
    sources (`WEIGHT_SOURCES`, dropped: the weights come from the run). A builder that forwards `**kwargs` to its
    backend (timm) also gets plain scalar options whose names do not load files. Only `assets` (paths the run
    wrote with `save_assets`, checked by the caller) may name a path. Raises `ConfigError` naming `where`.`key`.
    """
    parameters = inspect.signature(ENCODERS.get(name)).parameters
    forwards = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    known = {k for k, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD} - {"pretrained"}
    out = {}
    for key, value in kwargs.items():
        if key in WEIGHT_SOURCES and key in known:
            continue
        if key in assets:
            out[key] = value
            continue
        if key not in known and not (forwards and not _UNSAFE_EXTRA.search(key)):
            raise ConfigError(f"{where}.{key}: encoder '{name}' takes no option '{key}' from a saved run "
                              f"(allowed: {', '.join(sorted(known - WEIGHT_SOURCES))})")
        if not _plain(value):
            raise ConfigError(f"{where}.{key}: {str(value)[:60]!r} is not allowed in a saved run: only the run's "
                              f"own assets may name a file, and options are plain values")
        out[key] = value
    return out


def _plain(value: Any) -> bool:
    """A number, bool, None, a string that names no file, or a list of those."""
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float)) or (isinstance(value, str)
                                                                        and not looks_like_path(value))
