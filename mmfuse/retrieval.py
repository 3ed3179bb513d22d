"""Ranking metrics for retrieval and recommendation: recall@K and NDCG@K from a score matrix.

`scores` (Q, G): one row per query, one column per gallery item (higher = better match). `relevance` (Q, G):
0 for irrelevant items, > 0 for relevant ones (binary, or graded gains for NDCG). Queries without any relevant
item are left out of the means. Cross-modal retrieval of paired items is `relevance = torch.eye(N)`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def _top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(Q, min(k, G)) gallery indices of each query's k best scores, best first (ties: lower index first)."""
    k = min(k, scores.shape[1])
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    return order[:, :k]


def recall_at_k(scores: torch.Tensor, relevance: torch.Tensor, k: int) -> float:
    """Mean over queries of (relevant items in the top k) / min(k, relevant items).

    With one relevant item per query this is the hit rate: the fraction of queries whose item is in the top k.
    """
    relevant = relevance > 0
    has = relevant.any(1)
    if not has.any():
        return 0.0
    hits = torch.gather(relevant, 1, _top_k(scores, k)).sum(1).double()
    return (hits[has] / relevant.sum(1)[has].clamp(max=k).double()).mean().item()


def ndcg_at_k(scores: torch.Tensor, relevance: torch.Tensor, k: int) -> float:
    """Mean over queries of DCG@k / ideal DCG@k, with DCG = sum of gain / log2(rank + 1) and gain = relevance."""
    gains = relevance.double()
    has = (gains > 0).any(1)
    if not has.any():
        return 0.0
    top = _top_k(scores, k)
    discount = 1.0 / torch.log2(torch.arange(top.shape[1], dtype=torch.float64) + 2.0)  # (k,)
    dcg = (torch.gather(gains, 1, top) * discount).sum(1)
    ideal = (torch.sort(gains, dim=1, descending=True).values[:, : top.shape[1]] * discount).sum(1)
    return (dcg[has] / ideal[has]).mean().item()


def retrieval_metrics(scores: torch.Tensor, relevance: torch.Tensor, ks: Iterable[int] = (1, 5, 10),
                      prefix: str = "") -> dict[str, float]:
    """{'<prefix>recall@k', '<prefix>ndcg@k'} for each k."""
    out = {}
    for k in ks:
        out[f"{prefix}recall@{k}"] = recall_at_k(scores, relevance, k)
        out[f"{prefix}ndcg@{k}"] = ndcg_at_k(scores, relevance, k)
    return out


def chance_recall(gallery: int, k: int) -> float:
    """recall@k of a random ranking with one relevant item among `gallery` items."""
    return min(k, gallery) / gallery if gallery else math.nan
