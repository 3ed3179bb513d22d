"""Model selection over epochs by the task's best metric: the best epoch, the top-k epochs kept on disk
(`train.keep_best`) and early stopping (`train.early_stopping_patience`)."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..outputs import write_atomic


@dataclass
class Selection:
    """Ranks epochs by `metric` (higher or lower is better); state survives a resume via `to_dict` / `from_dict`."""

    metric: str
    higher_is_better: bool = True
    keep: int = 1
    """How many of the best epochs keep a checkpoint (1: only checkpoints/best)."""
    patience: int = 0
    """Stop after this many epochs without a better value (0: never)."""
    top: list[list[float]] = field(default_factory=list)
    """[value, epoch] of the kept epochs, best first."""
    best_epoch: int = 0
    last_epoch: int = 0

    def _key(self, value: float) -> float:
        return value if self.higher_is_better else -value

    def update(self, epoch: int, value: float) -> tuple[bool, list[int]]:
        """Record `epoch`'s value. Returns whether it is the new best (strictly better, or the first epoch with a
        finite value) and the epochs that fell out of the top `keep` (their checkpoints can go). A NaN or infinite
        value is never selected nor kept (it is dropped at once): with no finite value yet there is no best epoch
        (`best_epoch` 0)."""
        self.last_epoch = epoch
        if value is None or not math.isfinite(value):
            return False, [epoch]
        improved = not self.top or self._key(value) > self._key(self.top[0][0])
        if improved:
            self.best_epoch = epoch
        ranked = sorted([*self.top, [value, epoch]], key=lambda item: (-self._key(item[0]), item[1]))
        self.top, dropped = ranked[: self.keep], ranked[self.keep:]
        return improved, [int(e) for _, e in dropped]

    def write_index(self, top: Path, dropped: list[int]) -> None:
        """Remove the `dropped` epochs' checkpoints from `top` and write `top/index.json` ranking the kept ones."""
        for epoch in dropped:
            shutil.rmtree(top / f"epoch-{epoch:04d}", ignore_errors=True)
        index = [{"epoch": int(e), self.metric: v, "path": f"epoch-{int(e):04d}"} for v, e in self.top]
        write_atomic(top / "index.json", json.dumps(index, indent=2))

    def kept(self, epoch: int) -> bool:
        return any(int(e) == epoch for _, e in self.top)

    @property
    def should_stop(self) -> bool:
        return self.stalled(self.patience)

    def stalled(self, patience: int, since: int = 0) -> bool:
        """Whether `patience` (> 0) epochs have passed without a better value, counting from the best epoch or from
        epoch `since` (the last epoch before a recipe stage began), whichever is later."""
        return patience > 0 and self.last_epoch - max(self.best_epoch, since) >= patience

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Selection:
        return cls(**state)
