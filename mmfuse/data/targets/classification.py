"""classification: one label per record, a name of the vocabulary; shard member `.cls` "3" (an index);
batch `label` (B,) int64."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ...errors import FieldError
from .base import Described, ShardOptions, TargetKind

LABEL_MEMBER = "cls"


def label_indices(raw: dict[str, Any], info: Described) -> list[int]:
    """The label indices of a sample's label member (indices, or names when `label_encoding` is 'name')."""
    data = raw.get(info.label_field)
    if data is None:
        raise FieldError("label", f"no '.{info.label_field}' member")
    text = data.decode("utf-8", "replace").strip()
    parts = [p.strip() for p in text.split(",")] if text else []
    if info.label_encoding == "name":
        unknown = [p for p in parts if p not in info.label_index]
        if unknown:
            raise FieldError("label", f"'{unknown[0][:40]}' is not one of the {len(info.labels)} labels")
        return [info.label_index[p] for p in parts]
    try:
        indices = [int(p) for p in parts]
    except ValueError:
        raise FieldError("label", f"not an integer: {text[:20]!r}") from None
    bad = [i for i in indices if not 0 <= i < len(info.labels)]
    if bad:
        raise FieldError("label", f"index {bad[0]} outside the {len(info.labels)} labels")
    return indices


def label_names(raw: dict[str, Any], info: Described) -> list[str] | None:
    """The label names a sample's label member holds (None: it has none), as a record shows them."""
    if info.label_field not in raw:
        return None
    text = raw[info.label_field].decode("utf-8").strip()
    names = [p.strip() for p in text.split(",")] if text else []
    return names if info.label_encoding == "name" else [info.labels[int(p)] for p in names]


class Classification(TargetKind):
    """The cell is the record's label name, as a one-name list (a multilabel cell is a list of any length)."""

    name = "classification"
    entry = "label"

    def columns(self, config: ShardOptions) -> list[tuple[str, str]]:
        return [("--label", config.label)]

    def parse(self, row: dict[str, Any], config: ShardOptions, vocabulary: set[str] | None) -> list[str]:
        value = row.get(config.label)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise FieldError(config.label, "missing label")
        return self.known([str(value).strip()], config, vocabulary)

    @staticmethod
    def known(names: list[str], config: ShardOptions, vocabulary: set[str] | None) -> list[str]:
        unknown = [n for n in names if vocabulary is not None and n not in vocabulary]
        if unknown:
            raise FieldError(config.label, f"unknown label '{unknown[0][:40]}'")
        return names

    def vocabulary(self, config: ShardOptions, cells: Iterable[list[str]]) -> list[str]:
        return list(config.labels) if config.labels is not None else sorted({n for cell in cells for n in cell})

    def encode(self, cell: list[str], index: dict[str, int]) -> dict[str, str]:
        return {LABEL_MEMBER: ",".join(str(index[n]) for n in cell)}

    def describe(self, config: ShardOptions, vocabulary: list[str], accepted: list[tuple[str, Any]]
                 ) -> dict[str, Any]:
        return {"label_field": LABEL_MEMBER, "labels": vocabulary}

    def members(self, info: Described) -> tuple[str, ...]:
        return (info.label_field,)

    def decode(self, raw: dict[str, Any], info: Described) -> dict[str, Any]:
        indices = label_indices(raw, info)
        if len(indices) != 1:
            raise FieldError("label", f"expected one label, got {len(indices)}")
        return {"label": indices[0]}

    def record(self, raw: dict[str, Any], info: Described) -> dict[str, Any]:
        names = label_names(raw, info)
        return {} if names is None else {"label": names[0]}
