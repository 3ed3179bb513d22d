"""Evaluation metrics: classification (from a confusion matrix), multilabel (F1, mAP), regression (MAE, RMSE, R^2).

Retrieval metrics (recall@K, NDCG@K) are in `mmfuse.retrieval`.
"""

from __future__ import annotations

import torch


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts: rows are true classes, columns predicted classes."""
    index = targets.long() * num_classes + preds.long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def metrics_from_confusion(cm: torch.Tensor) -> dict[str, float]:
    """Accuracy, macro-F1 and count from a (C, C) confusion matrix (e.g. summed over ranks)."""
    cm = cm.double()
    count = int(cm.sum())
    tp, support, predicted = cm.diag(), cm.sum(1), cm.sum(0)
    seen = (support + predicted) > 0
    f1 = (2 * tp / (support + predicted).clamp_min(1))[seen]
    return {"accuracy": int(tp.sum()) / count if count else 0.0,
            "macro_f1": f1.mean().item() if seen.any() else 0.0, "count": count}


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-column average precision. Inputs: scores (N, C), targets (N, C) 0/1. Returns: (C,), NaN for a column
    without positives. Ties are ranked in input order."""
    order = torch.argsort(scores, dim=0, descending=True, stable=True)
    hits = torch.gather(targets.double(), 0, order)  # (N, C), best score first
    ranks = torch.arange(1, len(scores) + 1, dtype=torch.float64).unsqueeze(1)
    precision = hits.cumsum(0) / ranks
    positives = hits.sum(0)
    ap = (precision * hits).sum(0) / positives.clamp_min(1)
    return torch.where(positives > 0, ap, torch.full_like(ap, float("nan")))


def multilabel_metrics(scores: torch.Tensor, targets: torch.Tensor, threshold: float = 0.5) -> dict[str, float]:
    """Micro-F1, macro-F1 (over labels that occur in targets or predictions) at `threshold`, and mAP (mean AP
    over labels with a positive). Inputs: scores (N, C) probabilities, targets (N, C) 0/1."""
    preds, truth = scores >= threshold, targets > 0.5
    tp, fp, fn = (preds & truth).sum(0).double(), (preds & ~truth).sum(0).double(), (~preds & truth).sum(0).double()
    micro = 2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()).clamp_min(1)
    seen = (tp + fp + fn) > 0
    macro = (2 * tp / (2 * tp + fp + fn).clamp_min(1))[seen]
    ap = average_precision(scores, truth)
    ap = ap[~ap.isnan()]
    return {"micro_f1": micro.item(), "macro_f1": macro.mean().item() if seen.any() else 0.0,
            "map": ap.mean().item() if len(ap) else 0.0, "count": len(scores)}


def regression_sums(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(5, T) float64 sums that add up over batches and ranks: count, |error|, error^2, y, y^2 per target."""
    p, y = preds.double(), targets.double()
    return torch.stack([torch.full_like(y[0], len(y)), (p - y).abs().sum(0), ((p - y) ** 2).sum(0), y.sum(0),
                        (y**2).sum(0)])


def regression_metrics(sums: torch.Tensor, names: list[str] | None = None) -> dict[str, object]:
    """MAE, RMSE and R^2 from `regression_sums` (each the mean over targets), per target when there are several."""
    n, abs_err, sq_err, y, y2 = sums
    count = int(n[0].item()) if len(n) else 0
    if not count:
        return {"mae": 0.0, "rmse": 0.0, "r2": 0.0, "count": 0}
    mae, rmse = abs_err / count, (sq_err / count).sqrt()
    total = y2 - y**2 / count  # sum of squares around the mean
    r2 = torch.where(total > 0, 1 - sq_err / total.clamp_min(1e-300), torch.zeros_like(total))
    out: dict[str, object] = {"mae": mae.mean().item(), "rmse": rmse.mean().item(), "r2": r2.mean().item(),
                              "count": count}
    if names and len(names) > 1:
        out["per_target"] = {name: {"mae": mae[i].item(), "rmse": rmse[i].item(), "r2": r2[i].item()}
                             for i, name in enumerate(names)}
    return out
