"""`train.strategy: fsdp`: FSDP2 (`torch.distributed.fsdp.fully_shard`) instead of DDP under torchrun.

Each encoder with trainable parameters is its own FSDP unit and the model is the root unit; frozen towers are left
out (`ignored_params`): replicated, never all-gathered, so their forward needs no collective (and the feature cache
can encode on rank 0 alone). Checkpoints gather full state dicts (a collective: every rank calls it; rank 0 gets the
tensors) and load them back sharded. Uneven shares are handled as under DDP: a rank whose share has run out takes
zero-weight padding steps until every rank's has (`Trainer.steps`), and evaluation gathers the full weights
once (`gathered`) so each rank runs its own share with no collective per batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard

from ..model import FusionModel

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard_model(model: FusionModel) -> None:
    """Apply `fully_shard` to every trainable encoder, then to the model; frozen towers stay replicated."""
    frozen = set(model.frozen_towers())
    ignored = {p for m in frozen for p in model.encoders[m].parameters()}
    for m, encoder in model.encoders.items():
        if m not in frozen:
            fully_shard(encoder)
    fully_shard(model, ignored_params=ignored or None)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict on CPU on rank 0, {} on the others. Every rank must call it."""
    return get_model_state_dict(model, options=FULL)


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict (given on every rank) into the sharded model."""
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's full state (keyed by parameter names) on rank 0, {} on the others. Every rank calls it."""
    return get_optimizer_state_dict(model, optimizer, options=FULL)


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full optimizer state saved by rank 0 (passed on rank 0, broadcast to the others)."""
    set_optimizer_state_dict(model, optimizer, state,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


@contextmanager
def gathered(model: torch.nn.Module) -> Iterator[None]:
    """Full weights on every rank for the block (one all-gather per FSDP unit, on entry), so forwards need no
    collective: a rank may run fewer evaluation batches than another, or none."""
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            unit.set_reshard_after_forward(True, recurse=False)
            unit.reshard()
