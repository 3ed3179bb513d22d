"""Training tasks: classification, multilabel, regression, contrastive alignment and interactions (see `base.Task`).

A task is handed to the trainer beside the model: it supplies the model's head (and its contrastive alignment) and
owns the loss, the metrics and what "best" means. `create_task(model_config)` builds the task a `ModelConfig`
names (`model.task`); `create_model_and_task(model_config)` builds both; `list_tasks()` names them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import classification, contrastive, interactions, multilabel, regression  # noqa: F401 - register the tasks
from .base import Accumulator, SupervisedTask, Task
from .registry import TASKS, list_tasks, register_task, task_class

if TYPE_CHECKING:
    from ..model import FusionModel, ModelConfig


def check_model_config(config: ModelConfig) -> None:
    """The names a (torch-free) `ModelConfig` gives, against their registries: its task and its fusion's options.
    Raises `ConfigError` naming the key; run before any work (`finetune` does)."""
    from ..fusion.base import check_fusion_kwargs

    task_class(config.task)
    check_fusion_kwargs(config.fusion, config.fusion_kwargs)


def create_task(config: ModelConfig) -> Task:
    """The task `config.task` names, for `config`'s labels, modalities and options."""
    return task_class(config.task)(config)


def create_model_and_task(config: ModelConfig) -> tuple[FusionModel, Task]:
    """The model of `config` with its task's head (and contrastive alignment), and the task, bound to that model."""
    from ..model import FusionModel, build_parts

    task = create_task(config)
    encoders, fusion = build_parts(config)  # encoders, fusion, alignment, head: a seed's order of initialisation
    alignment = task.build_alignment()
    head = task.build_head(config.dim, config.dropout)
    model = FusionModel(encoders, fusion, head, modality_dropout=config.modality_dropout, alignment=alignment)
    task.bind(model)
    return model, task


__all__ = ["TASKS", "Accumulator", "SupervisedTask", "Task", "check_model_config", "create_model_and_task",
           "create_task", "list_tasks", "register_task", "task_class"]
