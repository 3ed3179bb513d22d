"""The task registry: `@register_task(name)` on a `Task` subclass; `task_class(name)`, `list_tasks()`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..registry import Registry

if TYPE_CHECKING:
    from .base import Task

TASKS: Registry[type[Task]] = Registry("task")


def register_task(name: str):
    """Class decorator: register a `Task` subclass under `name` (also its `name` attribute)."""

    def decorator(cls: type[Task]) -> type[Task]:
        cls.name = name
        return TASKS.register(name)(cls)

    return decorator


def task_class(name: str) -> type[Task]:
    """The registered task class `name`; an unknown name is a `ConfigError` naming the known ones."""
    return TASKS.get(name)


def list_tasks() -> list[str]:
    return TASKS.names()
