"""Classification metrics computed from predictions and targets (both (N,) int64)."""

from __future__ import annotations

import torch


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts: rows are true classes, columns predicted classes."""
    index = targets.long() * num_classes + preds.long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def accuracy(preds: torch.Tensor, targets: torch.Tensor) -> float:
    return int((preds == targets).sum()) / len(targets) if len(targets) else 0.0


def macro_f1(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in targets or predictions."""
    return metrics_from_confusion(confusion_matrix(preds, targets, num_classes))["macro_f1"]


def metrics_from_confusion(cm: torch.Tensor) -> dict[str, float]:
    """Accuracy, macro-F1 and count from a (C, C) confusion matrix (e.g. summed over ranks)."""
    cm = cm.double()
    count = int(cm.sum())
    tp, support, predicted = cm.diag(), cm.sum(1), cm.sum(0)
    seen = (support + predicted) > 0
    f1 = (2 * tp / (support + predicted).clamp_min(1))[seen]
    return {"accuracy": int(tp.sum()) / count if count else 0.0,
            "macro_f1": f1.mean().item() if seen.any() else 0.0, "count": count}


def classification_metrics(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict[str, float]:
    return metrics_from_confusion(confusion_matrix(preds, targets, num_classes))
