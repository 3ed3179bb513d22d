"""Embedding-level fusions over the pooled vectors: concat-MLP and gated (attention-weighted)."""

from __future__ import annotations

import torch
from torch import nn

from .base import Fusion, ModalityFeatures, register_fusion


@register_fusion("concat-mlp")
class ConcatMLPFusion(Fusion):
    """Concatenate the pooled vectors (absent ones zeroed) and the presence flags, then an MLP.

    Inputs: M modalities of pooled (B, D) and present (B,). Returns: (B, D).
    """

    def __init__(self, modalities: list[str], dim: int, hidden: int | None = None, dropout: float = 0.1) -> None:
        super().__init__(modalities, dim)
        n = len(self.modalities)
        hidden = hidden or 2 * dim
        self.mlp = nn.Sequential(
            nn.Linear(n * dim + n, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.LayerNorm(dim)
        )

    def forward(self, features: dict[str, ModalityFeatures]) -> torch.Tensor:
        features = self.complete(features)
        parts, flags = [], []
        for m in self.modalities:
            present = features[m].present.to(features[m].pooled.dtype).unsqueeze(-1)  # (B, 1)
            parts.append(features[m].pooled * present)
            flags.append(present)
        return self.mlp(torch.cat(parts + flags, dim=-1))  # (B, D)


@register_fusion("gated")
class GatedFusion(Fusion):
    """Attention-weighted sum of modality vectors: per-dimension gates, a softmax over present modalities.

    alpha[m] = softmax_m(W_m v_m + b_m) over present m (B, D) per dimension; fused = MLP(sum_m alpha[m] * v_m).
    A sample with no modality present gets the learned `empty` vector. Returns: (B, D).
    """

    def __init__(self, modalities: list[str], dim: int, dropout: float = 0.1) -> None:
        super().__init__(modalities, dim)
        self.gates = nn.ModuleDict({m: nn.Linear(dim, dim) for m in self.modalities})
        self.empty = nn.Parameter(torch.zeros(dim))
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout))
        self.norm = nn.LayerNorm(dim)

    def forward(self, features: dict[str, ModalityFeatures]) -> torch.Tensor:
        features = self.complete(features)
        vectors = torch.stack([features[m].pooled for m in self.modalities], dim=1)  # (B, M, D)
        present = torch.stack([features[m].present for m in self.modalities], dim=1)  # (B, M)
        scores = torch.stack([self.gates[m](features[m].pooled) for m in self.modalities], dim=1)  # (B, M, D)
        scores = scores.masked_fill(~present.unsqueeze(-1), float("-inf"))
        any_present = present.any(dim=1, keepdim=True)  # (B, 1)
        alpha = torch.softmax(scores.masked_fill(~any_present.unsqueeze(-1), 0.0), dim=1)  # (B, M, D)
        mixed = (alpha * vectors.masked_fill(~present.unsqueeze(-1), 0.0)).sum(1)  # (B, D)
        mixed = torch.where(any_present, mixed, self.empty.expand_as(mixed))
        return self.norm(mixed + self.out(mixed))
