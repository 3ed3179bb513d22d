"""`torch.distributed` set-up for runs launched by `torchrun` (DDP; gloo on CPU, nccl on CUDA).

`torchrun --nproc_per_node N -m mmfuse finetune ...` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; a plain
`mmfuse finetune` runs as a world of one and never touches `torch.distributed`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..precision import resolve_device


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the process group when launched by torchrun, pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistEnv(device=resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def shutdown(env: DistEnv) -> None:
    """Leave the process group once every rank is done: without the barrier a rank that finishes first tears its
    connections down while another still completes the last collective, which gloo answers with an abort."""
    if env.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def abandon() -> None:
    """Leave the process group at once, after an error (no barrier: another rank may never reach it)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    """Wait for every rank (e.g. until rank 0 has written a checkpoint the others will read)."""
    if env.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum a tensor over ranks (in place and returned); identity in a world of one."""
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's `obj`, in rank order (picklable Python values between our own processes only)."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def sum_counters(counts: dict[str, int], env: DistEnv) -> dict[str, int]:
    total: Counter[str] = Counter()
    for part in gather_objects(dict(counts), env):
        total.update(part)
    return dict(total)


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank if `flag` is True on any rank."""
    if not env.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def lockstep(loader: Iterable[dict[str, Any]], env: DistEnv) -> Iterator[dict[str, Any]]:
    """Yield `loader`'s non-empty batches while every rank still has one, so a collective inside the step (the
    contrastive all_gather) always has every rank; the epoch ends for all ranks when the first runs out.

    Empty batches (every sample skipped) are not steps: their skipped / ignored counts ride on the next batch.
    A rank's batches after the common end are not trained on (at most a batch or two per rank per epoch)."""
    it = iter(loader)
    carry: dict[str, Counter] = {"skipped": Counter(), "ignored": Counter()}
    while True:
        batch = next(it, None)
        while batch is not None and not len(batch["key"]):
            carry["skipped"].update(batch["skipped"])
            carry["ignored"].update(batch.get("ignored", {}))
            batch = next(it, None)
        if batch is not None:
            batch = {**batch, "skipped": dict(carry["skipped"] + Counter(batch["skipped"])),
                     "ignored": dict(carry["ignored"] + Counter(batch.get("ignored", {})))}
            carry = {"skipped": Counter(), "ignored": Counter()}
        if any_rank(batch is None, env):
            left = carry if batch is None else {"skipped": batch["skipped"], "ignored": batch["ignored"]}
            if sum(left["skipped"].values()) or sum(left["ignored"].values()):  # counted, never trained on
                yield {"key": [], "skipped": dict(left["skipped"]), "ignored": dict(left["ignored"])}
            return
        yield batch


def in_step(loader: Iterable[dict[str, Any]], env: DistEnv, stop: Callable[[], bool] = lambda: False
            ) -> Iterator[tuple[dict[str, Any] | None, bool]]:
    """Every rank takes part in every step while any rank still has data: yields (this rank's next batch, or None
    once its share has run out, `stop` on any rank) per step, and ends when every rank has run out.

    The trainer runs a rank without data (None, or a batch whose samples were all skipped) through a zero-weight
    padding step, so every rank takes the same optimizer steps: optimizers, schedules and step counters stay equal
    (DDP's `Join` would keep a finished rank out of the steps, and its optimizer and schedule behind), and a
    collective (a checkpoint's gather, the stop decision) may run at any step. One small all-reduce per step.
    """
    it = iter(loader)
    while True:
        batch = next(it, None)
        flags = torch.tensor([float(batch is not None), float(stop())], device=env.device)
        if env.distributed:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if not flags[0]:
            return
        yield batch, bool(flags[1])
