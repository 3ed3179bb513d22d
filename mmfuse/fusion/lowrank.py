"""Low-rank multimodal fusion (LMF, Liu et al. 2018): the outer product of the modality vectors (each with a
constant 1 appended), projected through rank-R factors, without ever forming the outer product.

    fused = sum_r w_r * prod_m (W_m^(r) [v_m ; 1]) + b

An absent modality contributes [0 ; 1] whatever its placeholder, which keeps only its factor's bias row: the
same term a missing input has in the full tensor fusion.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Fusion, ModalityFeatures, register_fusion


@register_fusion("lmf")
class LowRankFusion(Fusion):
    """LMF over the pooled vectors.

    Inputs: M modalities of pooled (B, D) and present (B,). Returns: (B, D).
    """

    def __init__(self, modalities: list[str], dim: int, rank: int = 4, dropout: float = 0.1) -> None:
        super().__init__(modalities, dim)
        self.factors = nn.ParameterDict({m: nn.Parameter(torch.empty(rank, dim + 1, dim)) for m in self.modalities})
        for factor in self.factors.values():
            nn.init.xavier_normal_(factor)
            with torch.no_grad():
                factor[:, -1] += 1.0  # start near "bias row 1": products neither vanish nor explode with M
        self.rank_weights = nn.Parameter(torch.full((rank,), 1.0 / rank))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, features: dict[str, ModalityFeatures]) -> torch.Tensor:
        features = self.complete(features)
        product = None
        for m in self.modalities:
            f = features[m]
            present = f.present.unsqueeze(-1)  # (B, 1)
            v = torch.where(present, f.pooled, torch.zeros_like(f.pooled))
            z = torch.cat([self.dropout(v), torch.ones_like(v[:, :1])], dim=-1)  # (B, D + 1)
            h = torch.einsum("bi,rio->rbo", z, self.factors[m])  # (R, B, D)
            product = h if product is None else product * h
        fused = torch.einsum("r,rbo->bo", self.rank_weights, product) + self.bias  # (B, D)
        return self.norm(fused)
