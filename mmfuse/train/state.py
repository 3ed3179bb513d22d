"""Resumable training state: optimizer, schedule, grad scaler, RNG streams, step and data position.

Saved as `train_state.pt` inside a checkpoint directory (written atomically with the weights by
`save_checkpoint`) and read back with `torch.load(weights_only=True)`: only tensors and plain containers.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE = "train_state.pt"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) RNG states as weights_only-loadable values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_state(directory: Path, state: dict[str, Any]) -> None:
    torch.save(state, directory / STATE)


def read_state(directory: str | Path) -> dict[str, Any]:
    return upgrade_state(torch.load(Path(directory) / STATE, map_location="cpu", weights_only=True))


def upgrade_state(state: dict[str, Any]) -> dict[str, Any]:
    """A train_state.pt from before per-rank parts (`positions` and `rng` lists, rank 0's counts) in today's form."""
    if "ranks" in state:
        return state
    shared = {k: state.pop(k) for k in ("acc", "skipped", "ignored")}
    state["ranks"] = [{"position": p, "rng": r, **shared} for p, r in zip(state.pop("positions"), state.pop("rng"),
                                                                           strict=True)]
    return state

