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
    cm = confusion_matrix(preds, targets, num_classes).double()
    tp = cm.diag()
    support, predicted = cm.sum(1), cm.sum(0)
    f1 = 2 * tp / (support + predicted).clamp_min(1)
    seen = (support + predicted) > 0
    return f1[seen].mean().item() if seen.any() else 0.0


def classification_metrics(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict[str, float]:
    return {"accuracy": accuracy(preds, targets), "macro_f1": macro_f1(preds, targets, num_classes),
            "count": int(len(targets))}
