"""multilabel: a set of labels per record, a JSON list or names joined by `label_sep` (blank: none); shard member
`.cls` "0,3" ("": none); batch `label` (B, C) float 0/1."""

from __future__ import annotations

from typing import Any

import torch

from ...errors import FieldError
from .base import Described, ShardOptions
from .classification import Classification, label_indices, label_names


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


class Multilabel(Classification):
    name = "multilabel"

    def parse(self, row: dict[str, Any], config: ShardOptions, vocabulary: set[str] | None) -> list[str]:
        value = row.get(config.label)
        if value is None:
            raise FieldError(config.label, "missing label")
        try:
            names = parse_label_list(value, config.label_sep)
        except FieldError as err:
            raise FieldError(config.label, err.reason) from None
        return self.known(names, config, vocabulary)

    def decode(self, raw: dict[str, Any], info: Described) -> dict[str, Any]:
        hot = torch.zeros(len(info.labels), dtype=torch.float32)
        hot[label_indices(raw, info)] = 1.0
        return {"label": hot}

    def record(self, raw: dict[str, Any], info: Described) -> dict[str, Any]:
        names = label_names(raw, info)
        return {} if names is None else {"label": names}
