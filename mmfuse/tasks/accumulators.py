"""Evaluation accumulators: state summed over batches and reduced across ranks, and the retrieval metrics that the
contrastive task and any task with a contrastive alignment report."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..retrieval import retrieval_metrics
from ..train.distributed import gather_objects

if TYPE_CHECKING:
    from ..train.distributed import DistEnv


class Accumulator(ABC):
    """Evaluation state summed over batches and reduced across ranks."""

    count = 0

    @abstractmethod
    def update(self, outputs: dict[str, Any], batch: dict[str, Any]) -> None:
        """Add one evaluation batch's outputs (the model's outputs dict) and targets."""

    @abstractmethod
    def compute(self, env: DistEnv) -> dict[str, Any]:
        """The metrics over every rank's batches (a collective under torchrun: every rank calls it)."""

    def reference(self, outputs: dict[str, Any], batch: dict[str, Any]) -> None:
        """A batch of the train split, for a task with `needs_reference` (others ignore it)."""
        return None


class Combined(Accumulator):
    """Several accumulators' metrics in one dict (a supervised task with auxiliary retrieval metrics)."""

    def __init__(self, *parts: Accumulator) -> None:
        self.parts = parts

    def update(self, outputs: dict[str, Any], batch: dict[str, Any]) -> None:
        for part in self.parts:
            part.update(outputs, batch)

    def compute(self, env: DistEnv) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for part in reversed(self.parts):  # the first (supervised) part's count wins
            out.update(part.compute(env))
        return out


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
