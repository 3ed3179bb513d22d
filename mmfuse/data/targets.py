"""Targets: how a sample's supervision travels manifest -> shard member -> batch, per dataset kind.

    kind            manifest                                   shard member          batch entry
    classification  label column: one name of the vocabulary   .cls "3" (index)      label  (B,) int64
    multilabel      label column: a list, or 'a|b' names       .cls "0,3" ("": none) label  (B, C) float 0/1
    regression      target columns: numbers                    .tgt "[1.5, -2.0]"    target (B, T) float32
    interactions    a pair file (user, item) beside it         .usr "0,7" (indices)  users  (B, L) int64, -1 pad
    none            (no supervision: contrastive alignment)    -                     -

`dataset.json` records the kind (`task`), the label vocabulary (`labels`) or the target names (`targets`) with the
train split's mean and std per target (`target_stats`), which a regression head uses to standardise. An interactions
dataset records the user vocabulary (`users`); each item carries the users that interacted with it (`data.pairs`).
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .info import DatasetInfo

KINDS = ("classification", "multilabel", "regression", "interactions", "none")
TARGET_LIMIT = 1e30
"""Largest |regression target| accepted: beyond it the float32 standardisation (t - mean) / std overflows."""
TARGET_MEMBER = "tgt"
USERS_MEMBER = "usr"


class FieldError(Exception):
    """A sample or manifest row's `field` is unusable for `reason`."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def parse_label_list(value: Any, sep: str = "|") -> list[str]:
    """A multilabel cell -> label names: a JSON list, or a string of names joined by `sep` (blank: none)."""
    if isinstance(value, list):
        names = [str(v).strip() for v in value]
    elif isinstance(value, str):
        names = [v.strip() for v in value.split(sep)] if value.strip() else []
    else:
        raise FieldError("label", f"expected a list or a '{sep}'-separated string, got {type(value).__name__}")
    if any(not n for n in names):
        raise FieldError("label", "empty label name in the list")
    if len(set(names)) != len(names):
        raise FieldError("label", "a label repeats in the list")
    return names


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


def _label_indices(raw: bytes, info: DatasetInfo) -> list[int]:
    text = raw.decode("utf-8", "replace").strip()
    parts = [p.strip() for p in text.split(",")] if text else []
    if info.label_encoding == "name":
        unknown = [p for p in parts if p not in info.label_index]
        if unknown:
            raise FieldError("label", f"'{unknown[0][:40]}' is not one of the {len(info.labels)} labels")
        return [info.label_index[p] for p in parts]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise FieldError("label", f"not an integer: {text[:20]!r}") from None


def _user_indices(raw: dict[str, Any], info: DatasetInfo) -> torch.Tensor:
    data = raw.get(USERS_MEMBER)
    if data is None:
        raise FieldError("users", f"no '.{USERS_MEMBER}' member")
    text = data.decode("utf-8", "replace").strip()
    try:
        indices = [int(p) for p in text.split(",")] if text else []
    except ValueError:
        raise FieldError("users", f"not a list of integers: {text[:20]!r}") from None
    bad = [i for i in indices if not 0 <= i < len(info.users)]
    if bad:
        raise FieldError("users", f"index {bad[0]} outside the {len(info.users)} users")
    return torch.tensor(indices, dtype=torch.long)


def decode_target(kind: str, raw: dict[str, Any], info: DatasetInfo) -> dict[str, Any]:
    """The target entries of one decoded sample (`label` or `target`) from its raw tar members."""
    if kind == "none":
        return {}
    if kind == "interactions":
        return {"users": _user_indices(raw, info)}
    if kind == "regression":
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
    data = raw.get(info.label_field)
    if data is None:
        raise FieldError("label", f"no '.{info.label_field}' member")
    indices = _label_indices(data, info)
    bad = [i for i in indices if not 0 <= i < len(info.labels)]
    if bad:
        raise FieldError("label", f"index {bad[0]} outside the {len(info.labels)} labels")
    if kind == "multilabel":
        hot = torch.zeros(len(info.labels), dtype=torch.float32)
        hot[indices] = 1.0
        return {"label": hot}
    if len(indices) != 1:
        raise FieldError("label", f"expected one label, got {len(indices)}")
    return {"label": indices[0]}


def collate_targets(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack the samples' `label` / `target` entries (see the module table)."""
    out = {}
    first = samples[0]
    if "label" in first:
        values = [s["label"] for s in samples]
        out["label"] = torch.stack(values) if isinstance(values[0], torch.Tensor) else torch.tensor(values)
    if "target" in first:
        out["target"] = torch.stack([s["target"] for s in samples])
    if "users" in first:
        out["users"] = pad_users([s["users"] for s in samples])
    return out


def pad_users(rows: list[torch.Tensor]) -> torch.Tensor:
    """Each item's user indices, padded with -1 to the longest list. Returns (B, L) int64 (L >= 1)."""
    width = max([1, *(len(r) for r in rows)])
    out = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out
