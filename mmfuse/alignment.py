"""Contrastive alignment of modalities, a module of the model: InfoNCE (CLIP) or SigLIP over the per-modality pooled
projections, with a learnable temperature (and SigLIP's bias) saved in the checkpoint.

Only the samples that have both modalities of a pair take part (mask-aware). Under DDP each rank gathers every
rank's embeddings with `torch.distributed.nn.functional.all_gather` (gradients flow back to their rank), so the
negatives span the global batch; each rank scores its own rows against all columns (open_clip's local loss).
The contrastive task (`mmfuse.tasks.contrastive`) trains on it alone; a supervised task adds it to its loss,
weighted by `model.contrastive_weight`.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

LOSSES = ("infonce", "siglip")


def gather_rows(x: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every rank's kept rows, in rank order, with gradients; and where this rank's rows start.

    Inputs: x (B, D), keep (B,) bool. Returns: (N, D) over all ranks, offset. Ranks may hold different B."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x[keep], 0
    world = dist.get_world_size()
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    pad = longest - x.shape[0]
    padded = F.pad(x, (0, 0, 0, pad))
    keeps = [torch.zeros(longest, dtype=torch.bool, device=x.device) for _ in range(world)]
    dist.all_gather(keeps, F.pad(keep, (0, pad)))
    from torch.distributed.nn.functional import all_gather

    parts = all_gather(padded)
    rows = [part[k] for part, k in zip(parts, keeps, strict=True)]
    rank = dist.get_rank()
    return torch.cat(rows), sum(len(r) for r in rows[:rank])


def infonce_loss(a: torch.Tensor, b: torch.Tensor, keep: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE. Inputs: a, b (B, D) L2-normalised, keep (B,) bool, scale (learnable logit scale)."""
    all_a, offset = gather_rows(a, keep)
    all_b, _ = gather_rows(b, keep)
    la, lb = a[keep], b[keep]
    if not len(la):  # no pair here: a zero that still reaches every parameter (DDP expects their gradients)
        return (all_a.sum() + all_b.sum() + scale) * 0.0
    target = torch.arange(len(la), device=a.device) + offset
    return (F.cross_entropy(scale * la @ all_b.T, target) + F.cross_entropy(scale * lb @ all_a.T, target)) / 2


def siglip_loss(a: torch.Tensor, b: torch.Tensor, keep: torch.Tensor, scale: torch.Tensor,
                bias: torch.Tensor) -> torch.Tensor:
    """SigLIP: a sigmoid per (a_i, b_j) pair, +1 for i == j, -1 otherwise, summed over pairs / this rank's rows."""
    all_b, offset = gather_rows(b, keep)
    la = a[keep]
    if not len(la):
        return (all_b.sum() + a.sum() + scale + bias) * 0.0
    logits = scale * la @ all_b.T + bias  # (L, N)
    sign = -torch.ones_like(logits)
    sign[torch.arange(len(la)), torch.arange(len(la)) + offset] = 1.0
    return -F.logsigmoid(sign * logits).sum() / len(la)


class Alignment(nn.Module):
    """The contrastive loss over every pair of `modalities`, with a learnable temperature (logit scale, capped at
    100 as in CLIP) and, for SigLIP, a learnable bias. `forward(pooled, present)` -> scalar (the mean over pairs)."""

    def __init__(self, modalities: list[str], loss: str = "infonce") -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ConfigError(f"model.contrastive_loss must be one of {', '.join(LOSSES)}, got '{loss}'")
        if len(modalities) < 2:
            raise ConfigError(f"contrastive alignment needs 2 or more modalities, got {', '.join(modalities)}")
        self.pairs = list(itertools.combinations(modalities, 2))
        self.loss = loss
        init_scale, init_bias = (math.log(10.0), -10.0) if loss == "siglip" else (math.log(1 / 0.07), None)
        self.logit_scale = nn.Parameter(torch.tensor(init_scale))
        self.logit_bias = nn.Parameter(torch.tensor(init_bias)) if init_bias is not None else None

    def forward(self, pooled: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> torch.Tensor:
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        total = []
        for m, n in self.pairs:
            a, b = F.normalize(pooled[m].float(), dim=-1), F.normalize(pooled[n].float(), dim=-1)
            keep = present[m] & present[n]
            if self.loss == "siglip":
                total.append(siglip_loss(a, b, keep, scale, self.logit_bias))
            else:
                total.append(infonce_loss(a, b, keep, scale))
        return torch.stack(total).mean()
