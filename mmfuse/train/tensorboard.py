"""TensorBoard logging beside metrics.jsonl: every record the run logs also becomes scalars (rank 0 only).

Step records (`loss`, `lr`) go under `train/`, epoch records (`train_loss`, `val_accuracy`, ...) under `epoch/`,
all at the optimizer step. tensorboard is an optional dependency (`pip install 'mmfuse[tensorboard]'`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

MISSING = ("mmfuse: train.tensorboard is set but the tensorboard package is not installed "
           "(pip install 'mmfuse[tensorboard]'); logging to metrics.jsonl only")


class TensorBoardLog:
    """Writes run records as scalars into `directory` (events after `purge_step` are dropped on resume)."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def __call__(self, record: dict[str, Any]) -> None:
        prefix = "epoch" if "train_loss" in record else "train"
        for key, value in record.items():
            if key not in ("epoch", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])

    def close(self) -> None:
        self.writer.close()


def open_tensorboard(directory: Path, purge_step: int | None,
                     echo: Callable[[str], Any] = print) -> TensorBoardLog | None:
    """A `TensorBoardLog` writing to `directory`, or None (with a message) if tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        echo(MISSING)
        return None
    return TensorBoardLog(SummaryWriter(str(directory), purge_step=purge_step))
