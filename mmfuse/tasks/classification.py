"""Single-label classification: softmax cross-entropy; accuracy and macro-F1; best by accuracy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..metrics import confusion_matrix, metrics_from_confusion
from ..train.distributed import all_reduce_sum
from .base import Accumulator, SupervisedTask
from .registry import register_task

if TYPE_CHECKING:
    from ..model import ModelConfig
    from ..train.distributed import DistEnv


class ConfusionAccumulator(Accumulator):
    """A (C, C) confusion matrix of argmax predictions, summed over batches and ranks."""

    def __init__(self, num_classes: int) -> None:
        self.cm = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def update(self, outputs: dict[str, Any], batch: dict[str, Any]) -> None:
        preds = outputs["head"].argmax(-1).cpu()
        self.cm += confusion_matrix(preds, batch["label"].cpu(), self.cm.shape[0])

    def compute(self, env: DistEnv) -> dict[str, Any]:
        """Accuracy, macro-F1 and count, and `chance`: the share of the most frequent true class (`majority`)
        and of the most frequent prediction (`top_prediction`), what the training diagnostics compare with."""
        cm = all_reduce_sum(self.cm.to(env.device), env).cpu()
        count = max(1, int(cm.sum()))
        return {**metrics_from_confusion(cm), "chance": {"majority": int(cm.sum(1).max()) / count,
                                                         "top_prediction": int(cm.sum(0).max()) / count}}


@register_task("classification")
class ClassificationTask(SupervisedTask):
    data_kinds = ("classification",)
    target = "classification"
    metric_names = ("accuracy", "macro_f1")
    best_metric = "accuracy"
    kwargs_defaults = {"label_smoothing": 0.0}

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        if len(self.labels) < 2:
            raise ConfigError(f"a classifier needs at least 2 labels, got {len(self.labels)}")
        if not 0.0 <= self.kwargs["label_smoothing"] < 1.0:
            raise ConfigError("model.task_kwargs.label_smoothing must be in [0, 1)")

    @classmethod
    def for_head(cls, model: torch.nn.Module) -> ClassificationTask:
        """The task of a classifier assembled by hand (a `ClassificationHead`): one class per head output, named
        '0', '1', ...; no contrastive alignment."""
        from types import SimpleNamespace

        classes = model.head.linear.out_features
        return cls(SimpleNamespace(task="classification", task_kwargs={}, labels=[str(i) for i in range(classes)],
                                   modalities=list(model.modalities), contrastive_weight=0.0,
                                   contrastive_loss="infonce"))

    def summary(self) -> str:
        return f"{len(self.labels)} labels{self.alignment_summary()}"

    def supervised_loss(self, head: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return F.cross_entropy(head, batch["label"], label_smoothing=self.kwargs["label_smoothing"])

    def supervised_metrics(self) -> Accumulator:
        return ConfusionAccumulator(len(self.labels))

    def proba(self, head: torch.Tensor) -> torch.Tensor:
        return torch.softmax(head.float(), -1)  # (B, C)

    def predict(self, head: torch.Tensor) -> list[str]:
        return [self.labels[i] for i in head.argmax(-1).tolist()]
