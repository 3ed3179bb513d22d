"""The fusion protocol and its registry (TorchMultimodal's `modules/fusions` composition).

A fusion takes `dict[modality, ModalityFeatures]` -- every modality already projected to the shared width D --
and returns one fused embedding (B, D). It must be mask-aware (a sample may lack a modality) and must not
depend on the order of the dict: implementations iterate `sorted(features)`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, did_you_mean
from ..registry import Registry


@dataclass
class ModalityFeatures:
    """One modality's projected encoder output.

    tokens (B, T, D), mask (B, T) bool (True = real token), pooled (B, D), present (B,) bool (False = the sample
    has no input of this modality; its tokens and pooled vector are placeholders and must be ignored).
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor
    present: torch.Tensor


class Fusion(nn.Module):
    """Base class: `forward(features) -> (B, D)`. `uses_tokens` tells the model whether to project tokens."""

    uses_tokens: bool = False

    def __init__(self, modalities: list[str], dim: int) -> None:
        super().__init__()
        self.modalities = sorted(modalities)
        self.dim = dim

    def forward(self, features: dict[str, ModalityFeatures]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def complete(self, features: dict[str, ModalityFeatures]) -> dict[str, ModalityFeatures]:
        """`features` with every modality of `self.modalities`: one left out becomes an absent placeholder (one
        masked zero token, present False), so leaving a modality out and passing it absent give the same result."""
        missing = [m for m in self.modalities if m not in features]
        if not missing:
            return features
        if not features:
            raise ValueError("a fusion needs the features of at least one modality")
        ref = next(iter(features.values())).pooled  # (B, D)
        B = ref.shape[0]
        out = dict(features)
        for m in missing:
            out[m] = ModalityFeatures(
                tokens=ref.new_zeros(B, 1, self.dim), mask=torch.zeros(B, 1, dtype=torch.bool, device=ref.device),
                pooled=ref.new_zeros(B, self.dim), present=torch.zeros(B, dtype=torch.bool, device=ref.device))
        return out


FUSIONS: Registry[Fusion] = Registry("fusion")


def register_fusion(name: str) -> Callable[[Callable[..., Fusion]], Callable[..., Fusion]]:
    """Decorator: make a fusion class available to `create_fusion(name)`."""
    return FUSIONS.register(name)


def create_fusion(name: str, modalities: list[str], dim: int, **kwargs: Any) -> Fusion:
    """Build a registered fusion over `modalities` at width `dim`."""
    factory = FUSIONS.get(name)
    check_fusion_kwargs(name, kwargs)
    return factory(modalities=modalities, dim=dim, **kwargs)


def check_fusion_kwargs(name: str, kwargs: dict[str, Any], where: str = "model.fusion_kwargs") -> None:
    """Refuse an option fusion `name` does not take, and values its option's default rules out: a count (an int
    default, or None for an `int | None`) below 1, a `dropout` outside [0, 1), another float not finite and > 0.
    An unregistered `name` is left to `create_fusion`."""
    if name not in FUSIONS:
        return
    params = {p.name: p for p in inspect.signature(FUSIONS.get(name)).parameters.values()
              if p.name not in ("modalities", "dim")}
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{where} must be a mapping, got {kwargs!r}")
    for key, value in kwargs.items():
        param = params.get(key)
        if param is None or param.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD and \
                param.kind is not inspect.Parameter.KEYWORD_ONLY:
            if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
                continue
            raise ConfigError(f"{where}.{key}: fusion '{name}' takes no option '{key}'{did_you_mean(str(key), params)}"
                              f"; it takes {', '.join(params) or 'none'}")
        default, number = param.default, isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is None and default is None:
            continue
        if (isinstance(default, int) and not isinstance(default, bool)) or (default is None and
                                                                              "int" in str(param.annotation)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{where}.{key} must be an integer >= 1, got {value!r}")
        elif isinstance(default, float):
            if not number or not math.isfinite(value):
                raise ConfigError(f"{where}.{key} must be a finite number, got {value!r}")
            if key.endswith("dropout") and not 0 <= value < 1:
                raise ConfigError(f"{where}.{key} is a probability in [0, 1), got {value!r}")
            if not key.endswith("dropout") and value <= 0:
                raise ConfigError(f"{where}.{key} must be > 0, got {value!r}")


def list_fusions() -> list[str]:
    """Names of all registered fusions."""
    return FUSIONS.names()
