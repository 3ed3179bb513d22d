"""Pooled fusion with explicit pairwise interaction terms, for matching tasks ("does this caption describe this
image?"): an MLP over the vectors themselves and, for each pair of modalities, their elementwise product and
absolute difference (the features of InferSent / ESIM-style matching), optionally a low-rank bilinear term.

    z = [v_a ; v_b ; ... ; flags ; v_a * v_b ; |v_a - v_b| ; (P_ab v_a) * (Q_ab v_b) ; ... ; pair flags]
    fused = LayerNorm(MLP(z))

A sum of products is an inner product, so a model can compare two vectors with one linear layer instead of
learning multiplication from a concatenation. An absent modality's vector is zeroed and every term of a pair with
it is zeroed too, whatever its placeholder.
"""

from __future__ import annotations

from itertools import combinations

import torch
from torch import nn

from .base import Fusion, ModalityFeatures, register_fusion


@register_fusion("interact")
class InteractionFusion(Fusion):
    """Vectors + per-pair product, absolute difference (and a rank-`bilinear_rank` bilinear term) -> MLP.

    Each pooled vector is layer-normalised per modality first, so products compare directions at a common scale.
    Inputs: M modalities of pooled (B, D) and present (B,). Returns: (B, D).
    """

    def __init__(self, modalities: list[str], dim: int, hidden: int | None = None, dropout: float = 0.1,
                 bilinear_rank: int | None = None) -> None:
        super().__init__(modalities, dim)
        self.pairs = list(combinations(self.modalities, 2))
        self.bilinear_rank = bilinear_rank
        rank = bilinear_rank or 0
        self.norms = nn.ModuleDict({m: nn.LayerNorm(dim) for m in self.modalities})
        if rank:  # one pair of rank-r factors per modality pair, keyed "a|b" (sorted names)
            self.bilinear = nn.ModuleDict({f"{a}|{b}": nn.ModuleList([nn.Linear(dim, rank, bias=False),
                                                                      nn.Linear(dim, rank, bias=False)])
                                           for a, b in self.pairs})
        n, p = len(self.modalities), len(self.pairs)
        width = n * (dim + 1) + p * (2 * dim + rank + 1)
        hidden = hidden or 2 * dim
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                                 nn.LayerNorm(dim))

    def forward(self, features: dict[str, ModalityFeatures]) -> torch.Tensor:
        features = self.complete(features)
        vectors, flags = {}, {}
        for m in self.modalities:
            f = features[m]
            flags[m] = f.present.unsqueeze(-1)  # (B, 1) bool
            vectors[m] = torch.where(flags[m], self.norms[m](f.pooled), torch.zeros_like(f.pooled))  # (B, D)
        parts = [vectors[m] for m in self.modalities] + [flags[m].to(vectors[m].dtype) for m in self.modalities]
        for a, b in self.pairs:
            both = flags[a] & flags[b]  # (B, 1)
            va, vb = vectors[a], vectors[b]
            terms = [va * vb, (va - vb).abs()]  # (B, D) each
            if self.bilinear_rank:
                left, right = self.bilinear[f"{a}|{b}"]
                terms.append(left(va) * right(vb))  # (B, r)
            pair = torch.cat(terms, dim=-1)
            parts += [torch.where(both, pair, torch.zeros_like(pair)), both.to(pair.dtype)]
        return self.mlp(torch.cat(parts, dim=-1))  # (B, D)
