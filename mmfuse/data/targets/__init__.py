"""Targets: how a sample's supervision travels manifest -> shard member -> batch, one `TargetKind` per kind.

    kind            manifest                                   shard member          batch entry
    classification  label column: one name of the vocabulary   .cls "3" (index)      label  (B,) int64
    multilabel      label column: a list, or 'a|b' names       .cls "0,3" ("": none) label  (B, C) float 0/1
    regression      target columns: numbers                    .tgt "[1.5, -2.0]"    target (B, T) float32
    interactions    a pair file (user, item) beside it         .usr "0,7" (indices)  users  (B, L) int64, -1 pad
    none            (no supervision: contrastive alignment)    -                     -

`dataset.json` records the kind (`task`), the label vocabulary (`labels`) or the target names (`targets`) with the
train split's mean and std per target (`target_stats`), which a regression head uses to standardise. An interactions
dataset records the user vocabulary (`users`); each item carries the users that interacted with it (`data.pairs`).

Each kind is one module and one registered `TargetKind` (`base`); the data layer only asks the kind. A new kind is
a new module whose class is decorated with `@register_kind` (or added to the registration below).
"""

from __future__ import annotations

from ...errors import FieldError
from .base import (
    TARGET_KINDS,
    Described,
    Joined,
    ShardOptions,
    TargetKind,
    collate_targets,
    decode_target,
    get_kind,
    kind_names,
    register_kind,
    supervision_members,
)
from .classification import Classification
from .interactions import USERS_MEMBER, Interactions, pad_users
from .multilabel import Multilabel, parse_label_list
from .none import NoTarget
from .regression import TARGET_LIMIT, TARGET_MEMBER, Regression, parse_number

for _kind in (Classification, Multilabel, Regression, Interactions, NoTarget):  # this order: the messages'
    register_kind(_kind)

KINDS = kind_names()
"""The built-in kinds (`kind_names()` also lists those registered later)."""

__all__ = ["KINDS", "TARGET_KINDS", "TARGET_LIMIT", "TARGET_MEMBER", "USERS_MEMBER", "Described", "FieldError",
           "Joined", "ShardOptions", "TargetKind", "collate_targets", "decode_target", "get_kind", "kind_names",
           "pad_users", "parse_label_list", "parse_number", "register_kind", "supervision_members"]
