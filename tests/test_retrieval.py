"""recall@K and NDCG@K against hand-computed rankings; multilabel and regression metrics against their formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmfuse.metrics import average_precision, multilabel_metrics, regression_metrics, regression_sums
from mmfuse.retrieval import chance_recall, ndcg_at_k, recall_at_k, retrieval_metrics


def test_recall_and_ndcg_of_paired_items():
    # query 0 ranks its item first, query 1 second, query 2 third
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.5, 0.1], [0.3, 0.2, 0.1]])
    relevance = torch.eye(3)
    assert recall_at_k(scores, relevance, 1) == pytest.approx(1 / 3)
    assert recall_at_k(scores, relevance, 2) == pytest.approx(2 / 3)
    assert recall_at_k(scores, relevance, 3) == pytest.approx(1.0)
    expected = (1 + 1 / math.log2(3) + 1 / math.log2(4)) / 3
    assert ndcg_at_k(scores, relevance, 3) == pytest.approx(expected)
    assert ndcg_at_k(scores, relevance, 1) == pytest.approx(1 / 3)


def test_graded_relevance_and_queries_without_relevant_items():
    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    relevance = torch.tensor([[0.0, 2.0, 0.0, 1.0], [0.0, 2.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    # query 2 has no relevant item: left out. Query 0: 1 of 2 relevant in the top 2; query 1: 1 of 2.
    assert recall_at_k(scores, relevance, 2) == pytest.approx(0.5)
    dcg0 = 2 / math.log2(3)  # the gain-2 item at rank 2
    dcg1 = 1 / math.log2(2)  # the gain-1 item at rank 1
    ideal = 2 + 1 / math.log2(3)
    assert ndcg_at_k(scores, relevance, 2) == pytest.approx((dcg0 + dcg1) / 2 / ideal)
    metrics = retrieval_metrics(scores, relevance, (1, 2), prefix="q_")
    assert set(metrics) == {"q_recall@1", "q_ndcg@1", "q_recall@2", "q_ndcg@2"}


def test_a_random_ranking_scores_chance():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(2000, 50, generator=g)
    assert recall_at_k(scores, torch.eye(2000, 50), 5) == pytest.approx(chance_recall(50, 5), abs=0.03)


def test_average_precision_matches_the_definition():
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.3, 0.2], [0.1, 0.6]])
    targets = torch.tensor([[1, 0], [0, 0], [1, 0], [0, 0]])
    ap = average_precision(scores, targets)
    assert ap[0].item() == pytest.approx((1 / 1 + 2 / 3) / 2) and math.isnan(ap[1].item())


def test_multilabel_f1_at_the_threshold():
    scores = torch.tensor([[0.9, 0.6, 0.1], [0.2, 0.8, 0.7]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    m = multilabel_metrics(scores, targets, threshold=0.5)
    # tp 2 (0/0, 1/1), fp 2 (0/1, 1/2), fn 0 -> micro-F1 4 / 6; per label: 1, 2/3, 0 (label 2 predicted only)
    assert m["micro_f1"] == pytest.approx(4 / 6) and m["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert m["map"] == pytest.approx(1.0) and m["count"] == 2


def test_regression_metrics_sum_over_batches():
    rng = np.random.default_rng(0)
    y, p = rng.normal(size=(40, 2)), rng.normal(size=(40, 2))
    sums = regression_sums(torch.tensor(p[:15]), torch.tensor(y[:15])) + regression_sums(
        torch.tensor(p[15:]), torch.tensor(y[15:]))
    m = regression_metrics(sums, ["a", "b"])
    r2 = 1 - ((p - y) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)
    assert m["mae"] == pytest.approx(np.abs(p - y).mean())
    assert m["rmse"] == pytest.approx(np.sqrt(((p - y) ** 2).mean(0)).mean())
    assert m["r2"] == pytest.approx(r2.mean()) and m["per_target"]["b"]["r2"] == pytest.approx(r2[1])
    assert m["count"] == 40
