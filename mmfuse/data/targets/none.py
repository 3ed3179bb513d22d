"""none: no supervision (contrastive alignment); nothing in the shards, nothing in the batch."""

from __future__ import annotations

from .base import TargetKind


class NoTarget(TargetKind):
    name = "none"
