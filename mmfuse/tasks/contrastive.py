"""Contrastive alignment of modalities: InfoNCE (CLIP) or SigLIP over the per-modality pooled projections.

Only the samples that have both modalities of a pair take part (mask-aware). Under DDP each rank gathers every
rank's embeddings with `torch.distributed.nn.functional.all_gather` (gradients flow back to their rank), so the
negatives span the global batch; each rank scores its own rows against all columns (open_clip's local loss).
The `mmfuse.alignment.Alignment` module lives in the model (`model.alignment`) and holds the learnable temperature
(and SigLIP's bias). As a task (`model.task: contrastive`) it needs no labels; as an auxiliary loss of a supervised
task it is weighted by `model.contrastive_weight`. Evaluation: cross-modal retrieval recall@K / NDCG@K of paired items.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..errors import ConfigError
from .accumulators import Accumulator, RetrievalAccumulator
from .base import Task
from .registry import register_task

if TYPE_CHECKING:
    from ..data.info import DatasetInfo
    from ..model import ModelConfig

@register_task("contrastive")
class ContrastiveTask(Task):
    """No labels, no head: the loss is the alignment itself; best by mean recall@K over both directions."""

    data_kinds = ("classification", "multilabel", "regression", "none")
    target = "none"
    metric_names = ("mean_recall",)
    best_metric = "mean_recall"
    kwargs_defaults = {"ks": [1, 5, 10]}
    demo_options = {"caption_colour": True}  # each shape painted in the colour its text names: retrieval finds it

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

    def describe_parts(self, metrics: dict[str, Any]) -> list[tuple[str, str]]:
        a, b = self.modalities[:2]
        k = self.kwargs["ks"][min(1, len(self.kwargs["ks"]) - 1)]
        return [("mean recall", f"{metrics['mean_recall']:.4f}"),
                (f"{a}->{b} R@{k}", f"{metrics.get(f'{a}_to_{b}_recall@{k}', 0.0):.4f}"),
                ("", f"({metrics.get('pairs', 0)} pairs)")]

    def predict(self, head: torch.Tensor) -> list[Any]:
        raise ConfigError("a contrastive model predicts no labels: use Predictor.embed(records, modality=...)")
