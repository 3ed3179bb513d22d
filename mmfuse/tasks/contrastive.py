"""Contrastive alignment of modalities: InfoNCE (CLIP) or SigLIP over the per-modality pooled projections.

Only the samples that have both modalities of a pair take part (mask-aware). Under DDP each rank gathers every
rank's embeddings with `torch.distributed.nn.functional.all_gather` (gradients flow back to their rank), so the
negatives span the global batch; each rank scores its own rows against all columns (open_clip's local loss).
The `Alignment` module lives in the model (`model.alignment`) and holds the learnable temperature (and SigLIP's
bias). As a task (`model.task: contrastive`) it needs no labels; as an auxiliary loss of a supervised task it is
weighted by `model.contrastive_weight`. Evaluation: cross-modal retrieval recall@K / NDCG@K of paired items.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..retrieval import retrieval_metrics
from ..train.distributed import gather_objects
from . import register_task
from .base import Accumulator, Task

if TYPE_CHECKING:
    from ..data.info import DatasetInfo
    from ..model import ModelConfig
    from ..train.distributed import DistEnv

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


class RetrievalAccumulator(Accumulator):
    """Cross-modal retrieval between the first two modalities (e.g. text->image and image->text): keeps the
    L2-normalised pooled embeddings of samples that have both, gathered over ranks once at the end."""

    def __init__(self, modalities: list[str], ks: tuple[int, ...] = (1, 5, 10)) -> None:
        self.a, self.b = modalities[0], modalities[1]
        self.ks = tuple(ks)
        self.rows: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.count = 0

    def update(self, outputs: dict[str, Any], batch: dict[str, Any]) -> None:
        pooled, present = outputs["pooled"], outputs["present"]
        keep = (present[self.a] & present[self.b]).cpu()
        self.count += len(keep)
        self.rows.append((F.normalize(pooled[self.a].float(), dim=-1).cpu()[keep],
                          F.normalize(pooled[self.b].float(), dim=-1).cpu()[keep]))

    def compute(self, env: DistEnv) -> dict[str, Any]:
        mine = (torch.cat([a for a, _ in self.rows]), torch.cat([b for _, b in self.rows])) if self.rows else None
        parts = [p for p in gather_objects(mine, env) if p is not None]
        count = sum(gather_objects(self.count, env))
        if not parts:
            return {"mean_recall": 0.0, "pairs": 0, "count": count}
        a, b = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        scores, relevance = a @ b.T, torch.eye(len(a))
        out = {**retrieval_metrics(scores, relevance, self.ks, f"{self.a}_to_{self.b}_"),
               **retrieval_metrics(scores.T, relevance, self.ks, f"{self.b}_to_{self.a}_")}
        recalls = [v for k, v in out.items() if "recall@" in k]
        return {"mean_recall": sum(recalls) / len(recalls), **out, "pairs": len(a), "count": count}


@register_task("contrastive")
class ContrastiveTask(Task):
    """No labels, no head: the loss is the alignment itself; best by mean recall@K over both directions."""

    data_kinds = ("classification", "multilabel", "regression", "none")
    target = "none"
    metric_names = ("mean_recall",)
    best_metric = "mean_recall"
    kwargs_defaults = {"ks": [1, 5, 10]}

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        if len(self.modalities) < 2:
            raise ConfigError("task 'contrastive' needs 2 or more modalities (model.modalities)")
        ks = self.kwargs["ks"]
        if not isinstance(ks, list) or not ks or not all(isinstance(k, int) and k > 0 for k in ks):
            raise ConfigError("model.task_kwargs.ks must be a list of positive integers, e.g. [1, 5, 10]")

    @classmethod
    def _complete(cls, config: ModelConfig, info: DatasetInfo) -> ModelConfig:
        from dataclasses import replace

        return replace(config, labels=[])

    @property
    def aligns(self) -> bool:
        return True

    def summary(self) -> str:
        return f"contrastive {self.contrastive_loss} alignment of {'+'.join(self.modalities)}"

    def build_head(self, dim: int, dropout: float) -> None:
        return None

    def loss(self, outputs: dict[str, Any], batch: dict[str, Any]) -> torch.Tensor:
        return outputs["alignment"]

    def metrics(self) -> Accumulator:
        return RetrievalAccumulator(self.modalities[:2], tuple(self.kwargs["ks"]))

    def describe(self, metrics: dict[str, Any]) -> str:
        a, b = self.modalities[:2]
        k = self.kwargs["ks"][min(1, len(self.kwargs["ks"]) - 1)]
        return (f"mean recall {metrics['mean_recall']:.4f}  {a}->{b} R@{k} "
                f"{metrics.get(f'{a}_to_{b}_recall@{k}', 0.0):.4f}  ({metrics.get('pairs', 0)} pairs)")

    def predict(self, head: torch.Tensor) -> list[Any]:
        raise ConfigError("a contrastive model predicts no labels: use Predictor.embed(records, modality=...)")
