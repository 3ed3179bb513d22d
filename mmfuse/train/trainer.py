"""The trainer: one step function (also what `mmfuse bench` times), evaluation, and the epoch loop."""

from __future__ import annotations

import itertools
import json
import math
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from ..config import TrainConfig
from ..data.batch import batch_size, to_device
from ..data.loader import SHARD_REASON, sample_skips
from ..errors import ConfigError, TrainingError
from ..model import FusionModel
from ..precision import autocast, choose_precision
from ..tasks import Task
from . import fsdp
from .distributed import DistEnv, in_step, lockstep, sum_counters
from .finite import LossWatch, weights_finite
from .optim import build_optimizer, warmup_cosine

PROGRESS_EVERY = 10
_VERSIONS = itertools.count()
"""The progress bar shows the loss of every this many micro-batches (reading it synchronises with the device)."""


class Trainer:
    """Owns the model on its device (DDP-wrapped when distributed), optimizer, schedule, precision and scaler.

    `train_step(batch)` runs one micro-batch forward + backward and, every `grad_accum` micro-batches, one
    optimizer step; `steps(loader)` trains on a pass, yielding a `Step` per micro-batch; `evaluate(loader)` returns
    the task's metrics over all ranks. The loss and the metrics come from `task` (`mmfuse.tasks`; for a classifier
    assembled by hand, `ClassificationTask.for_head(model)`).
    """

    def __init__(self, model: FusionModel, task: Task, cfg: TrainConfig, device: torch.device, total_steps: int,
                 env: DistEnv | None = None) -> None:
        self.cfg = cfg
        self.env = env or DistEnv(device=device)
        self.device = device
        self.model = model.to(device)
        model.keep_norm_statistics = cfg.keep_norm_statistics
        self.task = task
        task.bind(self.model)
        self.engine: torch.nn.Module = self.model
        self.fsdp = self.env.distributed and cfg.strategy == "fsdp"
        if self.fsdp and not self.task.shards:
            raise ConfigError(f"task '{self.task.name}' does not train under train.strategy=fsdp; use ddp")
        if self.fsdp:
            fsdp.shard_model(self.model)  # in place: self.model is now the FSDP root module
        elif self.env.distributed:
            ids = [device.index] if device.type == "cuda" else None
            # without a head (contrastive) the fusion takes no part in the loss
            self.engine = DistributedDataParallel(self.model, device_ids=ids,
                                                  find_unused_parameters=self.model.head is None)
        if cfg.compile:
            self.model.compile()  # in place: parameter names and checkpoints stay those of the eager model
        self.precision = choose_precision(device, cfg.precision, self.model)
        self.optimizer = build_optimizer(self.model, cfg, device)
        # clip what the optimizer steps: walking every (frozen) parameter each step costs more than the clipping
        self.trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.frozen_checked = False  # `check_finite` has seen every weight since the last load
        # changes with every optimizer step and every load, unique in the process: checkpoints written at the same
        # version hold the same weights
        self.weights_version = next(_VERSIONS)
        self.scheduler = warmup_cosine(self.optimizer, total_steps, cfg.warmup)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.total_steps = total_steps
        self.step = 0  # optimizer steps taken
        self.micro_step = 0
        # a CPU loss is read for free; on a device, losses are read together (train.nonfinite, `finite.py`)
        self.watch = LossWatch(self.env, 1 if device.type == "cpu" and not self.env.distributed else PROGRESS_EVERY)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        with autocast(self.device, self.precision):
            outputs = self.engine(batch, outputs=True)  # head (B, C), pooled, present, alignment
        return self.task.loss(outputs, batch)

    def train_step(self, batch: dict[str, Any], weight: float = 1.0) -> torch.Tensor:
        """One micro-batch (already on the device), its loss scaled by `weight` (0: a padding step that only takes
        part in the gradient reduction and the optimizer step). Returns the detached loss."""
        self.micro_step += 1
        boundary = self.micro_step % self.cfg.grad_accum == 0
        if self.fsdp:
            self.model.set_requires_gradient_sync(boundary)
        sync = nullcontext() if boundary or not self.env.distributed or self.fsdp else self.engine.no_sync()
        skip = self.cfg.nonfinite == "skip"
        with sync:
            loss = self.loss(batch)
            self.scaler.scale(loss * (weight / self.cfg.grad_accum)).backward()
        if skip:
            if weight:
                self.watch.note(loss)
        else:  # padding steps too: every rank reads its losses at the same micro-steps (a collective)
            self.watch.add(self.step + 1, list(batch.get("key", [])), loss.detach())
        if boundary:
            norm = None
            if self.cfg.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.grad_clip)
            if skip and self.watch.drop_step(norm):  # the step's gradients are dropped, the schedule goes on
                if self.scaler.is_enabled() and self.cfg.grad_clip > 0:
                    self.scaler.update()  # after unscale_ (which found the Inf): lowers the fp16 loss scale
            else:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # a first step dropped: "lr_scheduler.step() before optimizer.step()"
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
            self.step += 1
            self.weights_version = next(_VERSIONS)
        return loss.detach()

    def check_finite(self) -> None:
        """Raise `TrainingError` if a loss not yet read, or a weight, is NaN or Inf (before a checkpoint is
        written; every rank calls it)."""
        self.watch.check()
        # only the optimizer changes weights: after one check of them all, its parameters are enough (a frozen
        # tower's tens of millions of weights are not read again at every checkpoint)
        if not weights_finite(self.model, self.env, self.trainable if self.frozen_checked else None):
            raise TrainingError(f"the weights are NaN or Inf after step {self.step}; nothing was saved (lower "
                                f"train.lr or train.grad_clip, or check the data)")
        self.frozen_checked = True

    @torch.inference_mode()
    def evaluate(self, loader: Iterable[dict[str, Any]], num_classes: int | None = None,
                 reference: Iterable[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The task's metrics over every rank's share of the split (reduced over ranks), the sample count and the
        skipped-sample counts. `reference` (the train split, for a task with `needs_reference`) is passed through
        the model first; its skipped samples are not counted here. (`num_classes` is unused.)"""
        self.model.eval()
        metrics, skipped = self.task.metrics(), Counter()
        with fsdp.gathered(self.model) if self.fsdp else nullcontext():  # no collective per batch under FSDP
            for batch in reference if reference is not None else ():
                if batch_size(batch):
                    batch = to_device(batch, self.device)
                    with autocast(self.device, self.precision):
                        metrics.reference(self.model(batch, outputs=True), batch)
            for batch in loader:
                skipped.update(batch["skipped"])
                if not batch_size(batch):
                    continue
                batch = to_device(batch, self.device)
                with autocast(self.device, self.precision):
                    outputs = self.model(batch, outputs=True)
                metrics.update(outputs, batch)
        return {**metrics.compute(self.env), "skipped": sum_counters(skipped, self.env)}

    def padding_step(self, batch: dict[str, Any]) -> None:
        """A zero-weight step on `batch` (device) for a rank without data while others train (see `in_step`):
        eval mode, so no dropout draws from this rank's RNG and no normalisation statistics move."""
        self.model.eval()
        try:
            self.train_step(batch, weight=0.0)
        finally:
            self.model.train()

    def steps(self, loader: Iterable[dict[str, Any]], progress: Any = None,
              padding: Callable[[], dict[str, Any]] | None = None,
              stop: Callable[[], bool] = lambda: False) -> Iterator[Step]:
        """Train on this rank's share of `loader`, yielding a `Step` per micro-batch; stop iterating to end the
        epoch (max_steps, a signal).

        Under several processes every rank takes every step (`in_step`): a rank without a batch runs a padding step
        on `padding()` (a `Step` with `padding=True`) -- except for a loss that all-gathers (a contrastive alignment,
        the interactions task), whose negatives must be real samples: there the epoch ends when the first rank runs
        out (`lockstep`). `Step.stop` is True on every rank once `stop()` was True on any.
        """
        self.model.train()
        batches = 0
        # a loss that all-gathers (the contrastive alignment, the interactions task) needs real samples on every rank
        gathers = self.model.alignment is not None or self.task.gathers
        if not self.env.distributed:
            pairs = ((batch, stop()) for batch in loader)
        elif not gathers:
            pairs = in_step(loader, self.env, stop)
        else:  # a rank's own stop() may differ: a signal is acted on at the epoch's end
            pairs = ((batch, False) for batch in lockstep(loader, self.env))
        pad_batch = None
        tick = time.perf_counter()
        for batch, stopping in pairs:
            if batch is not None and batch_size(batch):
                batch = to_device(batch, self.device)
                loaded = time.perf_counter()
                loss = self.train_step(batch).double()  # stays on the device: no host sync per step
                done = time.perf_counter()
                step = Step(size=batch_size(batch), skipped=batch["skipped"], cursor=batch.get("cursor"), loss=loss,
                            stop=stopping, data_s=loaded - tick, compute_s=done - loaded)
                tick, batches = done, batches + 1
                if progress is not None:
                    progress.update(1)
                    if batches % PROGRESS_EVERY == 1:
                        progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
                yield step
                continue
            if batch is not None:  # every sample skipped: only counts
                yield Step(size=0, skipped=batch["skipped"], cursor=batch.get("cursor"))
            if not self.env.distributed or gathers:
                continue
            if pad_batch is None:
                if padding is None:
                    raise RuntimeError("Trainer.steps under several processes needs `padding` (a batch for the "
                                       "steps of a rank whose share has run out)")
                pad_batch = to_device(padding(), self.device)
            self.padding_step(pad_batch)
            yield Step(size=0, skipped={}, padding=True, stop=stopping)

    # -- state for checkpoints (collectives under FSDP: every rank calls them) ------------------------------------
    def model_state(self) -> dict[str, torch.Tensor] | None:
        """The full weights to save (rank 0; under FSDP gathered), or None: save the model as it is."""
        return fsdp.full_model_state(self.model) if self.fsdp else None

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        self.frozen_checked = False  # every weight may have changed
        self.weights_version = next(_VERSIONS)
        if self.fsdp:
            fsdp.load_model_state(self.model, state)
        else:
            self.model.load_state_dict(state)

    def optimizer_state(self) -> dict[str, Any]:
        return fsdp.full_optimizer_state(self.model, self.optimizer) if self.fsdp else self.optimizer.state_dict()

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        if self.fsdp:
            fsdp.load_optimizer_state(self.model, self.optimizer, state if self.env.is_main else {})
        else:
            self.optimizer.load_state_dict(state)


@dataclass
class Step:
    """One micro-batch of `Trainer.steps`. `loss`: a float64 tensor on the device (read it only when needed: each
    read of a CUDA tensor waits for the GPU); None when no sample was trained (`size` 0: every sample skipped, or
    a `padding` step). `skipped`: the loader's skip counts per reason; `cursor`: (worker, position) in the data."""

    size: int
    skipped: dict[str, int]
    cursor: tuple[int, int] | None = None
    loss: torch.Tensor | None = None
    stop: bool = False
    padding: bool = False
    data_s: float = 0.0
    compute_s: float = 0.0


@dataclass
class EpochTally:
    """A rank's running totals over an epoch's `Step`s; a mid-epoch checkpoint carries them across a resume.
    `loss_sum` and `nonfinite` are device tensors mid-epoch (summed without a host sync)."""

    loss_sum: float | torch.Tensor = 0.0
    batches: int = 0
    samples: int = 0
    skipped: int = 0
    """Samples the loader skipped (shard-level losses are counted in `shards`)."""
    data_s: float = 0.0
    compute_s: float = 0.0
    nonfinite: int | torch.Tensor = 0
    """Steps whose loss was NaN or Inf (`train.nonfinite: skip`), left out of `mean_loss`."""
    shards: dict[str, int] = field(default_factory=dict)

    def add(self, step: Step, skip_nonfinite: bool = False) -> None:
        self.skipped += sample_skips(step.skipped)
        self.data_s += step.data_s  # per step: a mid-epoch checkpoint carries the epoch's time so far
        self.compute_s += step.compute_s
        for reason, n in step.skipped.items():
            if reason.startswith(SHARD_REASON):
                self.shards[reason] = self.shards.get(reason, 0) + n
        if step.loss is None:
            return
        loss = step.loss
        if skip_nonfinite:  # the epoch's loss is the mean of the finite ones
            finite = torch.isfinite(loss)
            loss, self.nonfinite = torch.where(finite, loss, 0.0), self.nonfinite + ~finite
        self.loss_sum += loss
        self.batches += 1
        self.samples += step.size

    @property
    def mean_loss(self) -> float:
        batches = self.batches - int(self.nonfinite)
        return float(self.loss_sum) / batches if batches else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "loss_sum": float(self.loss_sum), "nonfinite": int(self.nonfinite)}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> EpochTally:
        return cls(**{k: v for k, v in state.items() if k in {f.name for f in fields(cls)}})


class MetricsLog:
    """Appends one JSON object per line to `metrics.jsonl`; `keep` lines survive a resume, the rest are cut.
    `mirror` (e.g. a `TensorBoardLog`) receives every record too."""

    def __init__(self, path: Path, keep: int = 0, mirror: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self.path, self.mirror = path, mirror
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = path.read_text().splitlines(keepends=True)[:keep] if keep and path.exists() else []
        path.write_text("".join(lines))
        self.lines = len(lines)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.lines += 1
        if self.mirror is not None:
            self.mirror(record)
