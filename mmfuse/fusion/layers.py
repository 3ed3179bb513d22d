"""Building blocks shared by the token-level fusions: masked attention (SDPA), pre-norm blocks, masked pooling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Fusion, ModalityFeatures


def valid_tokens(f: ModalityFeatures) -> torch.Tensor:
    """Tokens that may be attended to or pooled: real (mask) tokens of present samples. Returns: (B, T) bool."""
    return f.mask & f.present[:, None]


def valid_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over valid positions (zero where none), whatever the other positions hold: a NaN or Inf there never
    reaches the result (unlike `mmfuse.encoders.masked_mean`, which weights them by 0). Inputs: x (B, T, D),
    valid (B, T). Returns: (B, D)."""
    w = valid.to(x.dtype).unsqueeze(-1)
    return (x.masked_fill(~valid.unsqueeze(-1), 0.0) * w).sum(1) / w.sum(1).clamp_min(1.0)


def mean_over_present(vectors: list[torch.Tensor], present: list[torch.Tensor], empty: torch.Tensor) -> torch.Tensor:
    """Average of per-modality vectors over the present ones; `empty` (D,) where none is present.

    Inputs: M vectors (B, D), M present flags (B,). Returns: (B, D).
    """
    stacked = torch.stack(vectors, 1)  # (B, M, D)
    flags = torch.stack(present, 1)  # (B, M)
    mixed = valid_mean(stacked, flags)
    return torch.where(flags.any(1, keepdim=True), mixed, empty.expand_as(mixed))


class Attention(nn.Module):
    """Multi-head attention through `F.scaled_dot_product_attention` with a key mask.

    Inputs: x (B, Tq, D) queries, context (B, Tk, D) keys/values, key_valid (B, Tk) bool (every row must have
    at least one True). Returns: (B, Tq, D).
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        B, Tq, D = x.shape
        q = self.q(x).view(B, Tq, self.heads, -1).transpose(1, 2)  # (B, H, Tq, Dh)
        k, v = self.kv(context).view(B, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_valid[:, None, None, :],
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, Tq, D))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x), LN(context)), then x + MLP(LN(x)).

    Inputs: x (B, Tq, D), context (B, Tk, D) (None: self-attention on x), key_valid (B, Tk). Returns: (B, Tq, D).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None, key_valid: torch.Tensor) -> torch.Tensor:
        q = self.norm_q(x)
        kv = q if context is None else self.norm_kv(context)
        x = x + self.drop(self.attn(q, kv, key_valid))
        return x + self.drop(self.mlp(self.norm_mlp(x)))


def pick_heads(dim: int, heads: int) -> int:
    """`heads`, reduced to the largest divisor of `dim` not above it (tiny test widths)."""
    while dim % heads:
        heads -= 1
    return heads


class TokenFusion(Fusion):
    """Shared parts of the token-level fusions: one `Block` per (layer, modality), the `empty` vector for samples
    with nothing present, the output norm, and the per-modality states and valid-token masks to start from."""

    uses_tokens = True

    def _build_blocks(self, layers: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        heads = pick_heads(self.dim, heads)
        self.layers = nn.ModuleList(
            nn.ModuleDict({m: Block(self.dim, heads, mlp_ratio, dropout) for m in self.modalities})
            for _ in range(layers))
        self.empty = nn.Parameter(torch.zeros(self.dim))
        self.norm = nn.LayerNorm(self.dim)

    def _start(self, features: dict[str, ModalityFeatures]) -> tuple[dict, dict, int]:
        """States (B, T_m, D) and valid-token masks (B, T_m) per modality, and the batch size B."""
        features = self.complete(features)
        states = {m: features[m].tokens for m in self.modalities}
        valid = {m: valid_tokens(features[m]) for m in self.modalities}
        return states, valid, next(iter(valid.values())).shape[0]
