"""Interactions: tune item embeddings for a recommender from user-item pairs (a two-tower model).

Item tower: the fused embedding of all the item's modalities (mask-aware, what `mmfuse embed` exports). User tower:
a learned table of user vectors (`UserTower`, the model's head; `model.labels` holds the user ids). Both sides are
L2-normalised. Each step draws, for each item of the batch, one of its users as the positive (`sample_positive`),
then (`model.task_kwargs.loss`):

    softmax  in-batch sampled softmax: logits user_i . item_j / temperature over every item j of the global batch
             (gathered over DDP ranks), cross-entropy towards the item the user was drawn from; other items of the
             batch that user also interacted with are masked out (they are not negatives)
    bpr      Bayesian personalised ranking against the same in-batch negatives:
             mean over negatives j of -log sigmoid((user_i . item_i - user_i . item_j) / temperature)

Evaluation (cold-start items, see `mmfuse.data.pairs`): each user with training pairs is scored against every item
of the evaluated split (none of them trained on), relevant = the user's held-out pairs. Two user vectors:
    recall@K, ndcg@K            the mean of the user's *training* items' embeddings (a pass over the train split,
                                the `reference`): it measures the item embeddings themselves, as a consumer of
                                exported item vectors (MMRec-style) would use them; the best metric is recall@10
    user_recall@K, user_ndcg@K  the learned user vectors
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..alignment import gather_rows
from ..errors import ConfigError
from ..retrieval import ndcg_at_k, recall_at_k
from ..train.distributed import gather_objects
from .base import Accumulator, Task
from .registry import register_task

if TYPE_CHECKING:
    from ..data.info import DatasetInfo
    from ..model import ModelConfig
    from ..train.distributed import DistEnv

LOSSES = ("softmax", "bpr")
KS = (5, 10, 20)
Chunks = list[tuple[torch.Tensor, torch.Tensor]]
"""Item embeddings (b, D) with their users (b, L) int64, -1 padded, batch by batch."""


class UserTower(nn.Module):
    """The user side of the two-tower model: one learned vector per user. `forward(fused)` passes the item
    embedding through unchanged: (B, D) -> (B, D); the task reads `users` (U, D) in its loss and metrics."""

    def __init__(self, users: int, dim: int) -> None:
        super().__init__()
        self.users = nn.Embedding(users, dim)
        nn.init.normal_(self.users.weight, std=dim**-0.5)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return fused


def sample_positive(users: torch.Tensor) -> torch.Tensor:
    """One user drawn uniformly from each item's users. Inputs: users (B, L) int64, -1 padded.
    Returns: (B,) user index, -1 for an item without users."""
    valid = users >= 0
    counts = valid.sum(1)  # (B,)
    pick = (torch.rand(users.shape[0], device=users.device) * counts).long()  # (B,) in [0, count)
    rank = valid.long().cumsum(1) - 1  # (B, L) position among the valid entries
    hit = valid & (rank == pick[:, None])
    chosen = (users * hit).sum(1)
    return torch.where(counts > 0, chosen, torch.full_like(chosen, -1))


def _gather_users(users: torch.Tensor) -> torch.Tensor:
    """Every rank's (B, L) user lists, concatenated in rank order and padded with -1 to one width (no gradient)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return users
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, users.cpu())
    width = max(p.shape[1] for p in parts)
    return torch.cat([F.pad(p, (0, width - p.shape[1]), value=-1) for p in parts]).to(users.device)


def liked_by(drawn: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
    """(M, N) bool: drawn user i interacted with item j. Inputs: drawn (M,), users (N, L) -1 padded. Compares
    against the P valid (item, user) pairs only, so an item with many users costs P, not N x its user count."""
    items, slots = (users >= 0).nonzero(as_tuple=True)  # (P,) each
    rows, pairs = (users[items, slots][None, :] == drawn[:, None]).nonzero(as_tuple=True)
    out = torch.zeros(len(drawn), users.shape[0], dtype=torch.bool, device=users.device)
    out[rows, items[pairs]] = True
    return out


def interaction_loss(user_vecs: torch.Tensor, items: torch.Tensor, users: torch.Tensor, sampled: torch.Tensor,
                     temperature: float, loss: str = "softmax") -> torch.Tensor:
    """In-batch softmax or BPR of each drawn user against the global batch's items (see the module doc).

    Inputs: user_vecs (B, D) and items (B, D) L2-normalised, users (B, L) every item's users (-1 padded), sampled
    (B,) the drawn user per item (-1: none, the item takes no part). Returns: a scalar."""
    keep = sampled >= 0
    all_items, offset = gather_rows(items, keep)  # (N, D)
    all_users = _gather_users(users[keep])  # (N, L)
    mine, drawn = user_vecs[keep], sampled[keep]
    if not len(mine):  # nothing to learn here: a zero that still reaches every parameter (DDP expects gradients)
        return (all_items.sum() + user_vecs.sum()) * 0.0
    logits = mine @ all_items.T / temperature  # (M, N)
    target = torch.arange(len(mine), device=items.device) + offset
    also_liked = liked_by(drawn, all_users)  # (M, N)
    also_liked[torch.arange(len(mine)), target] = False
    if loss == "bpr":
        positive = logits.gather(1, target[:, None])  # (M, 1)
        negative = ~also_liked
        negative[torch.arange(len(mine)), target] = False
        if not negative.any():
            return logits.sum() * 0.0
        return -F.logsigmoid(positive - logits)[negative].mean()
    return F.cross_entropy(logits.masked_fill(also_liked, float("-inf")), target)


class InteractionAccumulator(Accumulator):
    """Item embeddings and their users of the evaluated split (`update`) and of the train split (`reference`),
    gathered over ranks once; scores users against the evaluated items (see the module doc)."""

    def __init__(self, tower: UserTower, ks: tuple[int, ...] = KS) -> None:
        self.tower, self.ks = tower, ks
        self.rows: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"eval": [], "reference": []}
        self.count = 0

    def _add(self, part: str, outputs: dict[str, Any], batch: dict[str, Any]) -> None:
        self.rows[part].append((F.normalize(outputs["head"].float(), dim=-1).cpu(), batch["users"].cpu()))

    def update(self, outputs: dict[str, Any], batch: dict[str, Any]) -> None:
        self.count += len(batch["key"])
        self._add("eval", outputs, batch)

    def reference(self, outputs: dict[str, Any], batch: dict[str, Any]) -> None:
        self._add("reference", outputs, batch)

    def _gathered(self, part: str, env: DistEnv) -> Chunks:
        return [chunk for rank in gather_objects(self.rows[part], env) for chunk in rank]

    def compute(self, env: DistEnv) -> dict[str, Any]:
        table = self.tower.users.weight.detach().float().cpu()  # (U, D)
        out = cold_start_metrics(self._gathered("reference", env), self._gathered("eval", env), table.shape[0],
                                 table, self.ks)
        return {**out, "count": sum(gather_objects(self.count, env))}


def cold_start_metrics(reference: Chunks, evaluated: Chunks, users: int, table: torch.Tensor | None = None,
                       ks: tuple[int, ...] = KS) -> dict[str, Any]:
    """recall@K / NDCG@K of ranking the `evaluated` items for each user whose profile (the mean of their
    `reference` items' embeddings) exists and who has an evaluated item; with `table` (U, D) the same with the
    learned user vectors (`user_` prefix); `chance_recall@K` of a random ranking; `users` and `items` counted."""
    dim = (reference or evaluated)[0][0].shape[1] if (reference or evaluated) else 0
    items = F.normalize(torch.cat([e for e, _ in evaluated]).float(), dim=-1) if evaluated else torch.zeros(0, dim)
    profiles = user_profiles(reference, (users, dim))  # (U, D), zero rows: no reference item
    relevance = relevance_matrix(evaluated, users)  # (U, N)
    queries = (profiles.abs().sum(1) > 0) & relevance.any(1)
    out: dict[str, Any] = {"users": int(queries.sum()), "items": len(items)}
    rel = relevance[queries].float()
    sides = [("", profiles)] + ([("user_", F.normalize(table.float(), dim=-1))] if table is not None else [])
    for prefix, vectors in sides:
        scores = vectors[queries] @ items.T  # (Q, N)
        for k in ks:
            out[f"{prefix}recall@{k}"] = recall_at_k(scores, rel, k) if len(rel) else 0.0
            out[f"{prefix}ndcg@{k}"] = ndcg_at_k(scores, rel, k) if len(rel) else 0.0
    relevant = rel.sum(1)
    for k in ks:  # a random ranking: expected hits k * relevant / N, over min(k, relevant)
        chance = (k * relevant / max(len(items), 1) / relevant.clamp(max=k)).mean().item() if len(rel) else 0.0
        out[f"chance_recall@{k}"] = min(chance, 1.0)
    return out


def user_profiles(chunks: Chunks, shape: tuple[int, int]) -> torch.Tensor:
    """Each user's mean of the (L2-normalised) embeddings of the items they interacted with, L2-normalised again.
    Inputs: chunks of (b, D) item embeddings with their (b, L) user indices (-1 padded); shape (U, D).
    Returns: (U, D), zero rows for users without items."""
    sums = torch.zeros(shape)
    for embeddings, users in chunks:
        rows, cols = (users >= 0).nonzero(as_tuple=True)
        sums.index_add_(0, users[rows, cols], F.normalize(embeddings.float(), dim=-1)[rows])
    return F.normalize(sums, dim=-1)


def relevance_matrix(chunks: Chunks, count: int) -> torch.Tensor:
    """(count, N) bool over the chunks' N items: user u interacted with item j."""
    total = sum(len(users) for _, users in chunks)
    relevance = torch.zeros(count, total, dtype=torch.bool)
    offset = 0
    for _, users in chunks:
        rows, cols = (users >= 0).nonzero(as_tuple=True)
        relevance[users[rows, cols], rows + offset] = True
        offset += len(users)
    return relevance


@register_task("interactions")
class InteractionsTask(Task):
    data_kinds = ("interactions",)
    target = "interactions"
    metric_names = ("recall@10", "ndcg@10", "user_recall@10")
    best_metric = "recall@10"
    kwargs_defaults = {"loss": "softmax", "temperature": 0.1}
    needs_reference = True
    gathers = True
    shards = False  # the loss reads the user table outside the model's forward: FSDP would hand it sharded
    label_rows = ("users.weight",)  # one vector per user
    demo_options = {"interactions": True}  # users who like (shape, material) combinations
    reports_labels = False  # the labels are the users

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        if self.kwargs["loss"] not in LOSSES:
            raise ConfigError(f"model.task_kwargs.loss must be one of {', '.join(LOSSES)}, got '{self.kwargs['loss']}'")
        temperature = self.kwargs["temperature"]
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ConfigError(f"model.task_kwargs.temperature must be a number > 0, got {temperature!r}")
        self.tower: UserTower | None = None

    @classmethod
    def _complete(cls, config: ModelConfig, info: DatasetInfo) -> ModelConfig:
        return replace(config, labels=list(info.users))

    def build_head(self, dim: int, dropout: float) -> UserTower:
        if not self.labels:
            raise ConfigError("an interactions model needs its users (model.labels: the dataset's user ids)")
        return UserTower(len(self.labels), dim)

    def bind(self, model: nn.Module) -> None:
        """The loss and the metrics score items against the model's user table (its head)."""
        self.tower = model.head

    def loss(self, outputs: dict[str, Any], batch: dict[str, Any]) -> torch.Tensor:
        items = F.normalize(outputs["head"].float(), dim=-1)  # (B, D)
        sampled = sample_positive(batch["users"])  # (B,)
        user_vecs = F.normalize(self.tower.users(sampled.clamp(min=0)).float(), dim=-1)  # (B, D)
        loss = interaction_loss(user_vecs, items, batch["users"], sampled, float(self.kwargs["temperature"]),
                                self.kwargs["loss"])
        if self.contrastive_weight > 0:
            loss = loss + self.contrastive_weight * outputs["alignment"]
        return loss

    def metrics(self) -> Accumulator:
        return InteractionAccumulator(self.tower)

    def summary(self) -> str:
        return f"interactions of {len(self.labels)} users, in-batch {self.kwargs['loss']}{self.alignment_summary()}"

    def describe_parts(self, metrics: dict[str, Any]) -> list[tuple[str, str]]:
        return [("recall@10", f"{metrics['recall@10']:.4f}"), ("NDCG@10", f"{metrics['ndcg@10']:.4f}"),
                ("user-vector recall@10", f"{metrics['user_recall@10']:.4f}"),
                ("", f"(chance {metrics['chance_recall@10']:.4f}, {metrics['users']} users x {metrics['items']} "
                     f"held-out items)")]

    def proba(self, head: torch.Tensor) -> torch.Tensor:
        return self.predict(head)

    def predict(self, head: torch.Tensor) -> list[Any]:
        raise ConfigError("an interactions model predicts no labels: embed items with Predictor.embed(records) or "
                          "`mmfuse embed`, and rank them for a user by cosine similarity")
