"""Regression of one or several float targets: MSE or Huber on standardised targets (the train split's mean / std
from dataset.json, kept in `task_kwargs` so predictions come back in the targets' units); MAE, RMSE, R^2; best by
RMSE (lower is better)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..metrics import regression_metrics, regression_sums
from ..train.distributed import all_reduce_sum
from .base import Accumulator, SupervisedTask
from .registry import register_task

if TYPE_CHECKING:
    from ..data.info import DatasetInfo
    from ..model import ModelConfig
    from ..train.distributed import DistEnv

LOSSES = ("mse", "huber")


class RegressionAccumulator(Accumulator):
    def __init__(self, task: RegressionTask) -> None:
        self.task = task
        self.sums = torch.zeros(5, len(task.labels), dtype=torch.float64)

    def update(self, outputs: dict[str, Any], batch: dict[str, Any]) -> None:
        width = batch["target"].shape[1]  # the data's targets: the head's first columns
        self.sums[:, :width] += regression_sums(self.task.values(outputs["head"])[:, :width].cpu(),
                                                batch["target"].cpu())

    def compute(self, env: DistEnv) -> dict[str, Any]:
        sums = all_reduce_sum(self.sums.to(env.device), env).cpu()
        width = int((sums[0] > 0).sum()) or len(self.task.labels)  # targets the data scored
        return regression_metrics(sums[:, :width], self.task.labels[:width])


@register_task("regression")
class RegressionTask(SupervisedTask):
    data_kinds = ("regression",)
    target = "regression"
    metric_names = ("rmse", "mae", "r2")
    best_metric = "rmse"
    higher_is_better = False
    output_noun = "target"
    kwargs_defaults = {"loss": "mse", "huber_delta": 1.0, "target_mean": None, "target_std": None}

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        if not self.labels:
            raise ConfigError("a regression model needs at least 1 target (model.labels holds the target names)")
        if self.kwargs["loss"] not in LOSSES:
            raise ConfigError(f"model.task_kwargs.loss must be one of {', '.join(LOSSES)}, got '{self.kwargs['loss']}'")
        width = len(self.labels)
        mean, std = self.kwargs["target_mean"] or [0.0] * width, self.kwargs["target_std"] or [1.0] * width
        if len(mean) != width or len(std) != width or any(s <= 0 for s in std):
            raise ConfigError(f"model.task_kwargs.target_mean / target_std need {width} values (std > 0)")
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)

    @classmethod
    def _complete(cls, config: ModelConfig, info: DatasetInfo) -> ModelConfig:
        stats = info.target_stats
        kwargs = {"target_mean": stats.get("mean"), "target_std": stats.get("std"), **config.task_kwargs}
        return replace(config, labels=list(info.targets), task_kwargs=kwargs)

    def values(self, head: torch.Tensor) -> torch.Tensor:
        """Head outputs (standardised) -> predictions in the targets' units. (B, T) -> (B, T)."""
        return head.float() * self.std.to(head.device) + self.mean.to(head.device)

    def supervised_loss(self, head: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        # a model extended by --init-from has the data's targets first, then targets the data lacks: not trained
        width = batch["target"].shape[1]
        head = head[:, :width]
        target = (batch["target"] - self.mean[:width].to(head.device)) / self.std[:width].to(head.device)
        if self.kwargs["loss"] == "huber":
            return F.huber_loss(head, target, delta=self.kwargs["huber_delta"])
        return F.mse_loss(head, target)

    def supervised_metrics(self) -> Accumulator:
        return RegressionAccumulator(self)

    def predict(self, head: torch.Tensor) -> list[dict[str, float]]:
        return [dict(zip(self.labels, row, strict=True)) for row in self.values(head).tolist()]
