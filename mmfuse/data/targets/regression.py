"""regression: numbers in the `targets` columns; shard member `.tgt` "[1.5, -2.0]"; batch `target` (B, T) float32.

`dataset.json` records the target names (`targets`) and the train split's mean and std per target
(`target_stats`), which a regression head uses to standardise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ...errors import DataError, FieldError
from .base import Described, ShardOptions, TargetKind

TARGET_LIMIT = 1e30
"""Largest |regression target| accepted: beyond it the float32 standardisation (t - mean) / std overflows."""
TARGET_MEMBER = "tgt"


def parse_number(value: Any, column: str) -> float:
    """A regression cell -> a finite float (numbers, or strings such as '3.5' from CSV)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise FieldError(column, "missing target value")
    if isinstance(value, bool):
        raise FieldError(column, f"not a number: {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FieldError(column, f"not a number: {str(value)[:40]!r}") from None
    if not math.isfinite(number):
        raise FieldError(column, f"not a finite number: {value!r}")
    if abs(number) > TARGET_LIMIT:
        raise FieldError(column, f"out of range: {value!r} (|target| must be <= {TARGET_LIMIT:g})")
    return number


def target_stats(accepted: Iterable[tuple[str, list[float]]], width: int) -> dict[str, list[float]]:
    """Mean and std of each target over the train split (every split if there is no 'train'); a std of 0 is 1."""
    sums = {split: [[0.0] * width, [0.0] * width, 0] for split in ("train", "all")}
    for split, values in accepted:
        for part in ("train", "all") if split == "train" else ("all",):
            total, squares, _ = sums[part]
            for i, v in enumerate(values):
                total[i] += v
                squares[i] += v * v
            sums[part][2] += 1
    total, squares, n = sums["train"] if sums["train"][2] else sums["all"]
    mean = [t / max(n, 1) for t in total]
    std = [max(s / max(n, 1) - m * m, 0.0) ** 0.5 for s, m in zip(squares, mean, strict=True)]
    return {"mean": mean, "std": [s if s > 1e-12 else 1.0 for s in std]}


class Regression(TargetKind):
    """The cell is the record's target values, in `ShardConfig.targets` order."""

    name = "regression"
    entry = "target"
    options = {"targets": "a regression manifest needs --targets COLUMN[,COLUMN...]; other tasks take none"}

    def columns(self, config: ShardOptions) -> list[tuple[str, str]]:
        return [("--targets", column) for column in config.targets]

    def parse(self, row: dict[str, Any], config: ShardOptions, vocabulary: set[str] | None) -> list[float]:
        return [parse_number(row.get(column), column) for column in config.targets]

    def encode(self, cell: list[float], index: dict[str, int]) -> dict[str, str]:
        return {TARGET_MEMBER: json.dumps(cell)}

    def describe(self, config: ShardOptions, vocabulary: list[str], accepted: list[tuple[str, Any]]
                 ) -> dict[str, Any]:
        return {"label_field": TARGET_MEMBER, "labels": [], "targets": list(config.targets),
                "target_stats": target_stats(accepted, len(config.targets))}

    def check(self, file: Path, info: Described) -> None:
        if not info.targets:
            raise DataError(f"{file}: a regression dataset needs its target names in 'targets'")

    def members(self, info: Described) -> tuple[str, ...]:
        return (TARGET_MEMBER,)

    def decode(self, raw: dict[str, Any], info: Described) -> dict[str, Any]:
        data = raw.get(TARGET_MEMBER)
        if data is None:
            raise FieldError("target", f"no '.{TARGET_MEMBER}' member")
        try:
            values = [float(v) for v in json.loads(data)]
        except (ValueError, TypeError):
            raise FieldError("target", f"not a JSON list of numbers: {data[:40]!r}") from None
        if len(values) != len(info.targets) or not all(math.isfinite(v) and abs(v) <= TARGET_LIMIT for v in values):
            raise FieldError("target", f"expected {len(info.targets)} finite numbers of magnitude <= "
                                       f"{TARGET_LIMIT:g}, got {values[:8]}")
        return {"target": torch.tensor(values, dtype=torch.float32)}

    def record(self, raw: dict[str, Any], info: Described) -> dict[str, Any]:
        if TARGET_MEMBER not in raw:
            return {}
        return {"target": dict(zip(info.targets, json.loads(raw[TARGET_MEMBER]), strict=True))}
