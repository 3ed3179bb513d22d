"""Resumable training state: optimizer, schedule, grad scaler, RNG streams, step and data position.

Saved as `train_state.pt` inside a checkpoint directory (written atomically with the weights by
`save_checkpoint`) and read back with `torch.load(weights_only=True)`: only tensors and plain containers.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError

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


REQUIRED = ("epoch", "step", "micro_step", "optimizer", "scheduler", "scaler", "best", "records")


def read_state(directory: str | Path) -> dict[str, Any]:
    """The resumable state of a checkpoint directory; a file that is not one mmfuse wrote is a `ConfigError`."""
    file = Path(directory) / STATE
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        missing = [k for k in REQUIRED if k not in state] if isinstance(state, dict) else ["a mapping"]
        if missing:
            raise KeyError(missing[0])
        return upgrade_state(state)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError, AttributeError,
            IndexError, zipfile.BadZipFile) as err:
        raise ConfigError(f"{file} is corrupt ({type(err).__name__}: not a train state mmfuse wrote); resume from "
                          f"an intact copy of the run, or start afresh with --overwrite") from None


def upgrade_state(state: dict[str, Any]) -> dict[str, Any]:
    """A train_state.pt from before per-rank parts (`positions` and `rng` lists, rank 0's counts) in today's form."""
    if "ranks" in state:
        return state
    shared = {k: state.pop(k) for k in ("acc", "skipped", "ignored")}
    state["ranks"] = [{"position": p, "rng": r, **shared} for p, r in zip(state.pop("positions"), state.pop("rng"),
                                                                           strict=True)]
    return state

