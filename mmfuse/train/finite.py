"""Finite numbers or a clear stop: the trainer's watch on non-finite losses and weights (`train.nonfinite`).

`stop` (the default) keeps each micro-batch's detached loss on the device with its step and sample keys, and reads
them together every `every` micro-batches and before any checkpoint is written (one host sync per read, none per
step on a GPU): the first non-finite one raises `TrainingError` naming the step and the batch's keys. `skip` needs
the answer before the optimizer step, so it reads one flag per optimizer step: the step whose losses (or gradient
norm) are not finite is dropped whole, counted in `skipped`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist

from ..errors import TrainingError
from .distributed import DistEnv

SHOW_KEYS = 8
"""Sample keys named in the error (the batch's first ones)."""


def describe_keys(keys: Sequence[str]) -> str:
    """'a, b, c' (the first `SHOW_KEYS`, then '... (N samples)')."""
    shown = ", ".join(str(k) for k in keys[:SHOW_KEYS])
    return shown + (f", ... ({len(keys)} samples)" if len(keys) > SHOW_KEYS else "")


class LossWatch:
    """Losses of the micro-batches not yet read on the host, with their optimizer step and sample keys."""

    def __init__(self, env: DistEnv, every: int) -> None:
        self.env, self.every = env, every
        self.pending: list[tuple[int, list[str], torch.Tensor]] = []
        self.step_ok: torch.Tensor | None = None
        """skip mode: device flag, False once a loss of the current optimizer step is not finite."""
        self.skipped = 0
        """skip mode: optimizer steps dropped for a non-finite loss or gradient norm."""

    # -- stop ------------------------------------------------------------------------------------------------
    def add(self, step: int, keys: list[str], loss: torch.Tensor) -> None:
        """Remember a micro-batch's detached scalar loss (no host read); reads all of them every `every` calls."""
        self.pending.append((step, keys, loss))
        if len(self.pending) >= self.every:
            self.check()

    def check(self) -> None:
        """Read the pending losses (one host sync) and raise `TrainingError` at the first that is NaN or Inf.
        Under several processes every rank calls it at the same micro-step; all raise if any rank saw one."""
        pending, self.pending = self.pending, []
        if not pending and not self.env.distributed:
            return
        finite = torch.isfinite(torch.stack([loss.float() for *_, loss in pending])) if pending else None
        bad = (~finite).nonzero() if finite is not None else torch.zeros(0, 1)
        local = int(bad[0, 0]) if len(bad) else len(pending)
        first = local
        if self.env.distributed:
            t = torch.tensor([local], dtype=torch.float64, device=self.env.device)
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            first = int(t.item())
        if first >= len(pending):
            return
        step, keys, loss = pending[first]
        if local == first:
            where = f"batch keys: {describe_keys(keys)}"
        else:
            where = "on another process"
        raise TrainingError(f"non-finite loss ({float(loss)}) at step {step}, {where}; nothing was saved after "
                            f"it (lower train.lr, check those samples, or set train.nonfinite=skip)")

    # -- skip ------------------------------------------------------------------------------------------------
    def note(self, loss: torch.Tensor) -> None:
        """skip mode: fold a micro-batch's loss into the current step's device-side flag (no host read)."""
        ok = torch.isfinite(loss.detach()).all()
        self.step_ok = ok if self.step_ok is None else self.step_ok & ok

    def drop_step(self, grad_norm: torch.Tensor | None = None) -> bool:
        """skip mode, at an optimizer step: True (on every rank) if it must be dropped. One host read."""
        ok = self.step_ok if self.step_ok is not None else torch.ones((), dtype=torch.bool)
        if grad_norm is not None:
            ok = ok.to(grad_norm.device) & torch.isfinite(grad_norm)
        self.step_ok = None
        bad = not bool(ok)
        if self.env.distributed:
            t = torch.tensor([float(bad)], device=self.env.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            bad = bool(t.item())
        self.skipped += bad
        return bad


def weights_finite(model: torch.nn.Module, env: DistEnv, parameters: Iterable[torch.Tensor] | None = None) -> bool:
    """Whether every parameter of `model` (or only `parameters`) is finite (on every rank: FSDP shards differ). One
    host read."""
    params = model.parameters() if parameters is None else parameters
    local = [p.to_local() if hasattr(p, "to_local") else p for p in params]
    ok = bool(torch.stack([torch.isfinite(p).all() for p in local]).all()) if local else True
    if env.distributed:
        t = torch.tensor([float(not ok)], device=env.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        ok = not bool(t.item())
    return ok
