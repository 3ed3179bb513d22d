"""The fusion protocol and its registry (TorchMultimodal's `modules/fusions` composition).

A fusion takes `dict[modality, ModalityFeatures]` -- every modality already projected to the shared width D --
and returns one fused embedding (B, D). It must be mask-aware (a sample may lack a modality) and must not
depend on the order of the dict: implementations iterate `sorted(features)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

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
    return FUSIONS.get(name)(modalities=modalities, dim=dim, **kwargs)


def list_fusions() -> list[str]:
    """Names of all registered fusions."""
    return FUSIONS.names()
