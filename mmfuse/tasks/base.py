"""The task protocol: what a model is trained to output, its loss, its metrics and what "best" means.

A `Task` is built from a `ModelConfig` (`task`, `task_kwargs`, `labels`, `contrastive_*`) by `create_task` and handed
to the trainer beside the model (the model knows no task). It gives
    build_head(dim, dropout)   the head on the fused embedding, or None (contrastive: no head)
    build_alignment()          the model's contrastive `Alignment`, or None
    bind(model)                called once with the model it trains (a task whose loss reads the head's parameters)
    loss(outputs, batch)       a scalar from the model's `forward(batch, outputs=True)` dict and the batch
    metrics()                  an `Accumulator`: update(outputs, batch) per eval batch, compute(env) over all ranks
    best_metric, higher_is_better, metric_names
    predict(head) / proba(head)  what `Predictor` returns
The model's outputs dict: head (B, C) or None, pooled {modality: (B, D)}, present {modality: (B,) bool} and, in
training mode when the model aligns modalities, alignment (a scalar contrastive loss).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError
from .accumulators import Accumulator, Combined, RetrievalAccumulator

if TYPE_CHECKING:
    from ..data.info import DatasetInfo
    from ..model import ModelConfig


class Task(ABC):
    """Base class; subclasses register with `@register_task(name)` and define `loss`, `metrics` and `predict`
    (contrastive, interactions), or derive from `SupervisedTask` for a head trained on targets."""

    name: ClassVar[str]
    data_kinds: ClassVar[tuple[str, ...]]
    """Dataset kinds (`dataset.json` task) this task trains on."""
    target: ClassVar[str]
    """What the loader decodes into the batch (`mmfuse.data.targets.KINDS`)."""
    metric_names: ClassVar[tuple[str, ...]]
    best_metric: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    kwargs_defaults: ClassVar[dict[str, Any]] = {}
    """The `model.task_kwargs` this task takes, with defaults; any other key is a `ConfigError`."""
    needs_reference: ClassVar[bool] = False
    """Evaluation also passes the train split through the model into the accumulator's `reference(outputs, batch)`
    (interactions: a user's training items make the user's profile)."""
    gathers: ClassVar[bool] = False
    """The loss gathers the batch over DDP ranks, so every rank must take part in every step."""
    shards: ClassVar[bool] = True
    """The task trains under `train.strategy: fsdp`."""

    def __init__(self, config: ModelConfig) -> None:
        unknown = sorted(set(config.task_kwargs) - set(self.kwargs_defaults))
        if unknown:
            known = ", ".join(sorted(self.kwargs_defaults)) or "none"
            raise ConfigError(f"model.task_kwargs.{unknown[0]}: not an option of task '{self.name}' (known: {known})")
        self.kwargs = {**self.kwargs_defaults, **config.task_kwargs}
        self.labels = list(config.labels)
        self.modalities = list(config.modalities)
        self.contrastive_weight = config.contrastive_weight
        self.contrastive_loss = config.contrastive_loss

    # -- set-up --------------------------------------------------------------------------------------------------
    @classmethod
    def prepare(cls, config: ModelConfig, info: DatasetInfo) -> ModelConfig:
        """`config` completed from the dataset (labels, target statistics); refuses a dataset of another kind."""
        if info.task not in cls.data_kinds:
            raise ConfigError(f"task '{cls.name}' needs a {' or '.join(cls.data_kinds)} dataset; "
                              f"{info.root}/dataset.json holds a {info.task} dataset (set model.task, or re-shard "
                              f"with `mmfuse shard --task ...`)")
        return cls._complete(config, info)

    @classmethod
    def _complete(cls, config: ModelConfig, info: DatasetInfo) -> ModelConfig:
        from dataclasses import replace

        return replace(config, labels=list(info.labels))

    def build_head(self, dim: int, dropout: float) -> nn.Module | None:
        from ..model import ClassificationHead

        return ClassificationHead(dim, len(self.labels), dropout)

    def build_alignment(self) -> nn.Module | None:
        """The contrastive alignment of the model's modalities when the task uses one (`aligns`), else None."""
        if not self.aligns:
            return None
        from ..alignment import Alignment

        return Alignment(self.modalities, self.contrastive_loss)

    def bind(self, model: nn.Module) -> None:  # noqa: B027 - most tasks need nothing of the model
        """Called once with the model the task trains or evaluates (by `create_model_and_task` and the trainer)."""

    @property
    def aligns(self) -> bool:
        """Whether the model carries a contrastive alignment between its modalities."""
        return self.contrastive_weight > 0

    @abstractmethod
    def loss(self, outputs: dict[str, Any], batch: dict[str, Any]) -> torch.Tensor:
        """A scalar from the model's outputs dict and the batch."""

    @abstractmethod
    def metrics(self) -> Accumulator:
        """A fresh accumulator for one evaluation pass."""

    label_rows: ClassVar[tuple[str, ...]] = ()
    """The head's parameters with one row per label (`--init-from` moves them by label name)."""
    demo_options: ClassVar[dict[str, Any]] = {}
    """`DemoSpec` options of the demo dataset this task trains on when no data is given."""
    reports_labels: ClassVar[bool] = True
    """metrics.json lists the labels (False: only their count, e.g. an interactions model's millions of users)."""
    output_noun: ClassVar[str] = "label"
    """What a head output is called in `summary` (regression: target)."""

    def summary(self) -> str:
        """What the run trains, for its opening line, e.g. 'regression: 1 target + 0.5 x infonce alignment'."""
        n = len(self.labels)
        return f"{self.name}: {n} {self.output_noun}{'s' if n != 1 else ''}{self.alignment_summary()}"

    def alignment_summary(self) -> str:
        """' + 0.5 x infonce alignment' when the task carries an auxiliary contrastive loss, else ''."""
        return f" + {self.contrastive_weight} x {self.contrastive_loss} alignment" if self.contrastive_weight > 0 \
            else ""

    def describe_parts(self, metrics: dict[str, Any]) -> list[tuple[str, str]]:
        """(name, value) of each metric a log line shows, the best metric first, e.g. [('accuracy', '0.9000'),
        ('macro-F1', '0.8800')]; a name may be '' (a note such as '(40 pairs)')."""
        return [(name.replace("macro_f1", "macro-F1").replace("micro_f1", "micro-F1"), f"{metrics[name]:.4f}")
                for name in self.metric_names]

    def describe(self, metrics: dict[str, Any]) -> str:
        """The metrics of a log line, e.g. 'accuracy 0.9000  macro-F1 0.8800'."""
        return join_parts(self.describe_parts(metrics))

    # -- inference -----------------------------------------------------------------------------------------------
    def proba(self, head: torch.Tensor) -> torch.Tensor:
        raise ConfigError(f"a {self.name} model has no class probabilities; use predict()")

    @abstractmethod
    def predict(self, head: torch.Tensor) -> list[Any]:
        """Head outputs (B, C) -> one prediction per sample (what `Predictor.predict` returns)."""


class SupervisedTask(Task):
    """A head trained on targets (classification, multilabel, regression): `supervised_loss` and `supervised_metrics`,
    plus the contrastive alignment's loss and retrieval metrics when `model.contrastive_weight` > 0."""

    label_rows = ("linear.weight", "linear.bias")  # a `ClassificationHead`: one output per label

    @abstractmethod
    def supervised_loss(self, head: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """A scalar from the head's outputs (B, C) float and the batch's targets."""

    @abstractmethod
    def supervised_metrics(self) -> Accumulator:
        """A fresh accumulator of the head's metrics."""

    def loss(self, outputs: dict[str, Any], batch: dict[str, Any]) -> torch.Tensor:
        loss = self.supervised_loss(outputs["head"].float(), batch)
        if self.contrastive_weight > 0:
            loss = loss + self.contrastive_weight * outputs["alignment"]
        return loss

    def metrics(self) -> Accumulator:
        if not self.aligns:
            return self.supervised_metrics()
        return Combined(self.supervised_metrics(), RetrievalAccumulator(self.modalities[:2]))


def join_parts(parts: list[tuple[str, str]]) -> str:
    """'name value  name value  note' from `Task.describe_parts`."""
    return "  ".join(f"{name} {value}" if name else value for name, value in parts)
