"""Token-level cross-modal attention: each modality's tokens attend to the other modalities' tokens.

A MulT-style stack (Tsai et al. 2019) over any set of modalities, with key-padding masks: at every layer each
modality m updates its tokens by cross-attending to the concatenated tokens of all other modalities (a learned
`null` key is always present so a sample whose other modalities are all absent stays finite), then a feed-forward.
All modalities are updated from the previous layer's states, so the order of the modalities does not matter.
The result is pooled per modality (masked mean over real tokens) and averaged over the present modalities.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import ModalityFeatures, register_fusion
from .layers import TokenFusion, mean_over_present, valid_mean


@register_fusion("cross-attention")
class CrossAttentionFusion(TokenFusion):
    """Stacked cross-modal attention blocks, one per (layer, modality), then masked pooling.

    Inputs: M modalities of tokens (B, T_m, D), mask (B, T_m), present (B,). Returns: (B, D).
    Cost per layer: sum_m T_m * (T - T_m) attention scores.
    """

    def __init__(self, modalities: list[str], dim: int, layers: int = 1, heads: int = 4, mlp_ratio: float = 2.0,
                 dropout: float = 0.1) -> None:
        super().__init__(modalities, dim)
        self._build_blocks(layers, heads, mlp_ratio, dropout)
        self.null = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, features: dict[str, ModalityFeatures]) -> torch.Tensor:
        states, valid, B = self._start(features)  # (B, T_m, D), (B, T_m)
        null = self.null.expand(B, -1, -1)  # (B, 1, D)
        null_valid = torch.ones(B, 1, dtype=torch.bool, device=null.device)
        for layer in self.layers:
            updated = {}
            for m in self.modalities:
                others = [o for o in self.modalities if o != m]
                context = torch.cat([null] + [states[o] for o in others], dim=1)  # (B, 1 + sum T_o, D)
                key_valid = torch.cat([null_valid] + [valid[o] for o in others], dim=1)
                updated[m] = layer[m](states[m], context, key_valid)
            states = updated
        pooled = [valid_mean(states[m], valid[m]) for m in self.modalities]  # M x (B, D)
        present = [valid[m].any(1) for m in self.modalities]
        return self.norm(mean_over_present(pooled, present, self.empty))  # (B, D)
