"""The `TargetKind` protocol and its registry: one object per kind of supervision, from manifest cell to batch entry.

A kind is asked, in the order data flows:

    shard writer (`mmfuse.data.shard`)       columns, parse, join, vocabulary, encode, describe
    dataset.json (`mmfuse.data.info`)        check
    loader (`mmfuse.data.loader`, `batch`)   members, decode, collate, record

A *cell* is the kind's value of one record as the writer holds it (a label name, a list of names, a list of
numbers, a list of users, None). Kinds never import `ShardConfig` or `DatasetInfo` (those import the registry):
they read the fields named by `ShardOptions` and `Described`.

A new kind: subclass `TargetKind`, set `name` (and `entry`, `options`), override the hooks it needs, and decorate
the class with `@register_kind` (the built-in kinds are registered in `mmfuse.data.targets`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import torch

from ...errors import DataError


class ShardOptions(Protocol):
    """The `mmfuse.data.manifest.ShardConfig` fields a kind reads."""

    label: str
    labels: list[str] | None
    label_sep: str
    targets: list[str]
    interactions: str | None
    user_column: str
    item_column: str


class Described(Protocol):
    """The `mmfuse.data.info.DatasetInfo` fields a kind reads (`meta`: the whole `dataset.json`)."""

    labels: list[str]
    label_field: str
    label_encoding: str
    targets: list[str]
    users: list[str]
    meta: dict[str, Any]

    @property
    def label_index(self) -> dict[str, int]: ...


class Joined(Protocol):
    """Cells a kind takes from a file beside the manifest (interactions: the pair file), per record key."""

    cells: dict[str, Any]
    missing: tuple[str, str]
    """(field, reason) of a planned record the file gives no cell (the record is refused)."""

    def drop(self, cell: Any) -> None:
        """The record holding `cell` was refused after all (its media)."""

    def meta(self) -> dict[str, Any]:
        """Fields for `dataset.json`."""

    def files(self) -> dict[str, str]:
        """Files to write beside `dataset.json`: name -> text."""

    def summary(self, out: Path) -> str:
        """A clause for the shard writer's one-line summary."""


class TargetKind:
    """One kind of supervision. Every hook has a default for a kind without supervision (`none`)."""

    name: ClassVar[str]
    entry: ClassVar[str | None] = None
    """The decoded sample's and the batch's entry ('label', 'target', 'users'); None: the kind decodes nothing. Kinds
    that share an entry collate it alike (the first registered one collates batches of unknown kind)."""
    options: ClassVar[dict[str, str]] = {}
    """`ShardConfig` fields only this kind takes -> the `DataError` when it lacks one or another kind has one."""

    # -- manifest -> shards ------------------------------------------------------------------------------------------
    def columns(self, config: ShardOptions) -> list[tuple[str, str]]:
        """(option, column) pairs the manifest must have."""
        return []

    def parse(self, row: dict[str, Any], config: ShardOptions, vocabulary: set[str] | None) -> Any:
        """A manifest row's cell; raises `FieldError` naming the column. `vocabulary`: labels allowed (None: any)."""
        return None

    def join(self, config: ShardOptions, keys: set[str]) -> Joined | None:
        """Cells from a file beside the manifest for the planned record `keys`; None: the cells are the rows'."""
        return None

    def vocabulary(self, config: ShardOptions, cells: Iterable[Any]) -> list[str]:
        """The names the shard members index into (`encode`'s `index`), from every planned record's cell."""
        return []

    def encode(self, cell: Any, index: dict[str, int]) -> dict[str, str]:
        """A cell -> the sample's shard members (extension -> text). `index`: position of each vocabulary name."""
        return {}

    def describe(self, config: ShardOptions, vocabulary: list[str], accepted: list[tuple[str, Any]]
                 ) -> dict[str, Any]:
        """This kind's `dataset.json` fields, given the vocabulary and the accepted records' (split, cell)."""
        return {"label_field": "cls", "labels": []}

    # -- dataset.json -> batches ---------------------------------------------------------------------------------
    def check(self, file: Path, info: Described) -> None:
        """Raise `DataError` (naming `file`) when `dataset.json` lacks a field this kind needs."""

    def members(self, info: Described) -> tuple[str, ...]:
        """The tar members `decode` reads (the loader's size check and the feature cache's index keep them)."""
        return ()

    def decode(self, raw: dict[str, Any], info: Described) -> dict[str, Any]:
        """One sample's raw tar members -> its decoded entries ({entry: value}); raises `FieldError`."""
        return {}

    def collate(self, values: list[Any]) -> torch.Tensor:
        """The samples' decoded `entry` values -> the batch entry: tensors of one shape stacked ((B,) + shape),
        numbers as a (B,) tensor. A kind with ragged values overrides it (interactions pads)."""
        return torch.stack(values) if isinstance(values[0], torch.Tensor) else torch.tensor(values)

    def record(self, raw: dict[str, Any], info: Described) -> dict[str, Any]:
        """What a plain record (`mmfuse.data.loader.read_records`) shows of the sample's supervision."""
        return {}


TARGET_KINDS: dict[str, TargetKind] = {}
"""Registered kinds by name, in registration order."""

K = TypeVar("K", bound=type[TargetKind])


def register_kind(cls: K) -> K:
    """Class decorator: register an instance of a `TargetKind` subclass under its `name`."""
    if cls.name in TARGET_KINDS and type(TARGET_KINDS[cls.name]) is not cls:
        raise ValueError(f"target kind '{cls.name}' is already registered")
    TARGET_KINDS[cls.name] = cls()
    return cls


def kind_names() -> tuple[str, ...]:
    return tuple(TARGET_KINDS)


def get_kind(name: str) -> TargetKind:
    """The registered kind `name`; an unknown one is a `DataError` listing the kinds."""
    try:
        return TARGET_KINDS[name]
    except KeyError:
        raise DataError(f"task must be one of {', '.join(TARGET_KINDS)}, got '{name}'") from None


def decode_target(kind: str, raw: dict[str, Any], info: Described) -> dict[str, Any]:
    """The target entries of one decoded sample (`label`, `target`, `users`) from its raw tar members."""
    return get_kind(kind).decode(raw, info)


def collate_targets(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack the samples' target entries, each by the first registered kind with that entry."""
    out = {}
    first = samples[0]
    for kind in TARGET_KINDS.values():
        if kind.entry is not None and kind.entry in first and kind.entry not in out:
            out[kind.entry] = kind.collate([s[kind.entry] for s in samples])
    return out


def supervision_members(info: Described) -> set[str]:
    """Every tar member some kind decodes (whatever kind a loader asks for)."""
    return {member for kind in TARGET_KINDS.values() for member in kind.members(info)}
