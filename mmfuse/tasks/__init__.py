"""Training tasks: classification, multilabel, regression, contrastive alignment and interactions (see `base.Task`).

`create_task(model_config)` builds the task a `ModelConfig` names (`model.task`); `list_tasks()` names them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..registry import Registry
from .base import Accumulator, SupervisedTask, Task

if TYPE_CHECKING:
    from ..model import ModelConfig

TASKS: Registry[type[Task]] = Registry("task")


def register_task(name: str):
    def decorator(cls: type[Task]) -> type[Task]:
        cls.name = name
        return TASKS.register(name)(cls)

    return decorator


def task_class(name: str) -> type[Task]:
    return TASKS.get(name)


def create_task(config: ModelConfig) -> Task:
    return TASKS.get(config.task)(config)


def list_tasks() -> list[str]:
    return TASKS.names()


from . import classification, contrastive, interactions, multilabel, regression  # noqa: E402,F401 - register the tasks

__all__ = ["Accumulator", "SupervisedTask", "Task", "create_task", "list_tasks", "register_task", "task_class"]
