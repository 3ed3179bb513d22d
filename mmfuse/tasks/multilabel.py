"""Multilabel classification: one sigmoid per label with binary cross-entropy; micro/macro-F1 at a threshold and
mean average precision (mAP, threshold-free: the best metric)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..metrics import multilabel_metrics
from ..train.distributed import gather_objects
from .base import Accumulator, SupervisedTask
from .registry import register_task

if TYPE_CHECKING:
    from ..model import ModelConfig
    from ..train.distributed import DistEnv


class MultilabelAccumulator(Accumulator):
    """Keeps every sample's label probabilities and multi-hot targets (gathered once over ranks for mAP)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.scores: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def update(self, outputs: dict[str, Any], batch: dict[str, Any]) -> None:
        labels = batch["label"]  # (B, C): the data's labels, the head's first C columns
        self.scores.append(torch.sigmoid(outputs["head"][:, : labels.shape[1]].float()).cpu())
        self.targets.append(labels.cpu())

    def compute(self, env: DistEnv) -> dict[str, Any]:
        parts = gather_objects((torch.cat(self.scores) if self.scores else None,
                                torch.cat(self.targets) if self.targets else None), env)
        scores = [s for s, _ in parts if s is not None]
        targets = [t for _, t in parts if t is not None]
        if not scores:
            return {"micro_f1": 0.0, "macro_f1": 0.0, "map": 0.0, "count": 0}
        return multilabel_metrics(torch.cat(scores), torch.cat(targets), self.threshold)


@register_task("multilabel")
class MultilabelTask(SupervisedTask):
    data_kinds = ("multilabel",)
    target = "multilabel"
    metric_names = ("map", "micro_f1", "macro_f1")
    best_metric = "map"
    kwargs_defaults = {"threshold": 0.5, "pos_weight": None}

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        if not self.labels:
            raise ConfigError("a multilabel model needs at least 1 label")
        if not 0.0 < self.kwargs["threshold"] < 1.0:
            raise ConfigError("model.task_kwargs.threshold must be in (0, 1)")
        pos_weight = self.kwargs["pos_weight"]
        if pos_weight is not None and (not isinstance(pos_weight, (int, float)) or pos_weight <= 0):
            raise ConfigError("model.task_kwargs.pos_weight must be a number > 0 (weight of positive labels)")

    def supervised_loss(self, head: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        # a model extended by --init-from has the data's labels first, then labels the data lacks: not trained here
        head = head[:, : batch["label"].shape[1]]
        weight = self.kwargs["pos_weight"]
        pos_weight = None if weight is None else torch.full_like(head[0], float(weight))
        return F.binary_cross_entropy_with_logits(head, batch["label"].to(head.dtype), pos_weight=pos_weight)

    def supervised_metrics(self) -> Accumulator:
        return MultilabelAccumulator(self.kwargs["threshold"])

    def describe_parts(self, metrics: dict[str, Any]) -> list[tuple[str, str]]:
        return [("mAP", f"{metrics['map']:.4f}"), ("micro-F1", f"{metrics['micro_f1']:.4f}"),
                ("macro-F1", f"{metrics['macro_f1']:.4f}")]

    def proba(self, head: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(head.float())  # (B, C), independent per label

    def predict(self, head: torch.Tensor) -> list[list[str]]:
        hot = self.proba(head) >= self.kwargs["threshold"]
        return [[self.labels[i] for i in row.nonzero().flatten().tolist()] for row in hot]
