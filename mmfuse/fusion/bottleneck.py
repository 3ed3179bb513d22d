"""Attention-bottleneck fusion (MBT, Nagrani et al. 2021): modalities exchange information only through a few
shared bottleneck tokens.

At each layer every present modality runs a self-attention block over [its tokens ; the bottleneck tokens]; the
bottleneck tokens each modality produced are then averaged over the present modalities and shared again. The
cross-modal cost is linear in the number of tokens (n_bottleneck per token, not T_other). Absent modalities
neither read nor write the bottleneck, so a sample with one modality is encoded by that modality alone.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import ModalityFeatures, register_fusion
from .layers import TokenFusion, mean_over_present, valid_mean


@register_fusion("bottleneck")
class BottleneckFusion(TokenFusion):
    """MBT's mid-fusion with `bottlenecks` shared tokens over `layers` blocks (one per layer and modality).

    Inputs: M modalities of tokens (B, T_m, D), mask (B, T_m), present (B,).
    Returns: (B, D) = LayerNorm(mean over present m of pooled tokens_m + mean of the bottleneck tokens).
    """

    def __init__(self, modalities: list[str], dim: int, layers: int = 1, heads: int = 4, bottlenecks: int = 4,
                 mlp_ratio: float = 2.0, dropout: float = 0.1) -> None:
        super().__init__(modalities, dim)
        self.bottleneck = nn.Parameter(torch.randn(1, bottlenecks, dim) * 0.02)  # drawn first, as before
        self._build_blocks(layers, heads, mlp_ratio, dropout)

    def forward(self, features: dict[str, ModalityFeatures]) -> torch.Tensor:
        states, valid, B = self._start(features)  # (B, T_m, D), (B, T_m)
        present = {m: valid[m].any(1) for m in self.modalities}  # (B,)
        z = self.bottleneck.expand(B, -1, -1)  # (B, N, D)
        n = z.shape[1]
        z_valid = torch.ones(B, n, dtype=torch.bool, device=z.device)
        for layer in self.layers:
            z_new, z_flags = [], []
            for m in self.modalities:
                x = torch.cat([states[m], z], dim=1)  # (B, T_m + N, D)
                key_valid = torch.cat([valid[m], z_valid], dim=1)
                x = layer[m](x, None, key_valid)
                states[m] = x[:, :-n]
                z_new.append(x[:, -n:])
                z_flags.append(present[m])
            flags = torch.stack(z_flags, 1)[:, :, None, None].to(z.dtype)  # (B, M, 1, 1)
            summed = (torch.stack(z_new, 1) * flags).sum(1)  # (B, N, D)
            count = flags.sum(1)  # (B, 1, 1)
            z = torch.where(count > 0, summed / count.clamp_min(1.0), z)  # no modality present: keep z
        pooled = [valid_mean(states[m], valid[m]) for m in self.modalities]
        mixed = mean_over_present(pooled, [present[m] for m in self.modalities], self.empty)
        return self.norm(mixed + z.mean(1))  # (B, D)
