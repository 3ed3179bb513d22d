"""The trainer: one step function (also what `mmfuse bench` times), evaluation, and the epoch loop."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..config import TrainConfig
from ..data.batch import batch_size, to_device
from ..metrics import classification_metrics
from ..model import FusionModel
from .optim import build_optimizer, warmup_cosine
from .precision import autocast, choose_precision


class Trainer:
    """Owns the model on its device, the optimizer, schedule, precision and grad scaler.

    `train_step(batch)` runs one micro-batch forward + backward and, every `grad_accum` micro-batches, one
    optimizer step; `evaluate(loader)` returns accuracy / macro-F1; `fit(...)` runs the epochs.
    """

    def __init__(self, model: FusionModel, cfg: TrainConfig, device: torch.device, total_steps: int) -> None:
        self.cfg = cfg
        self.device = device
        self.model = model.to(device)
        self.precision = choose_precision(device, cfg.precision)
        self.optimizer = build_optimizer(self.model, cfg.lr, cfg.encoder_lr, cfg.weight_decay, device)
        self.scheduler = warmup_cosine(self.optimizer, total_steps, cfg.warmup)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.total_steps = total_steps
        self.step = 0  # optimizer steps taken
        self.micro_step = 0

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        with autocast(self.device, self.precision):
            logits = self.model(batch)  # (B, C)
        return F.cross_entropy(logits.float(), batch["label"])

    def train_step(self, batch: dict[str, Any]) -> torch.Tensor:
        """One micro-batch (already on the device). Returns the detached loss."""
        loss = self.loss(batch)
        self.scaler.scale(loss / self.cfg.grad_accum).backward()
        self.micro_step += 1
        if self.micro_step % self.cfg.grad_accum == 0:
            if self.cfg.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.step += 1
        return loss.detach()

    @torch.inference_mode()
    def predict(self, loader: Iterable[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, Counter]:
        """Predicted and true class indices over a loader, and the skipped-sample counts."""
        self.model.eval()
        preds, targets, skipped = [], [], Counter()
        for batch in loader:
            skipped.update(batch["skipped"])
            if not batch_size(batch):
                continue
            batch = to_device(batch, self.device)
            with autocast(self.device, self.precision):
                logits = self.model(batch)
            preds.append(logits.argmax(-1).cpu())
            targets.append(batch["label"].cpu())
        if not preds:
            return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), skipped
        return torch.cat(preds), torch.cat(targets), skipped

    def evaluate(self, loader: Iterable[dict[str, Any]], num_classes: int) -> dict[str, Any]:
        preds, targets, skipped = self.predict(loader)
        return {**classification_metrics(preds, targets, num_classes), "skipped": dict(skipped)}

    def train_epoch(self, loader: Iterable[dict[str, Any]], on_step: Callable[[dict[str, Any]], None],
                    progress: Any = None) -> dict[str, Any]:
        """One pass over `loader`; returns samples seen, skipped counts, mean loss and the data/compute split."""
        self.model.train()
        seen, skipped, losses = 0, Counter(), []
        data_time = compute_time = 0.0
        tick = time.perf_counter()
        for batch in loader:
            skipped.update(batch["skipped"])
            if not batch_size(batch):
                continue
            batch = to_device(batch, self.device)
            loaded = time.perf_counter()
            loss = self.train_step(batch)
            losses.append(loss)
            seen += batch_size(batch)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            done = time.perf_counter()
            data_time, compute_time, tick = data_time + loaded - tick, compute_time + done - loaded, done
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            if self.step % self.cfg.log_every == 0 and self.micro_step % self.cfg.grad_accum == 0:
                on_step({"step": self.step, "loss": loss.item(), "lr": self.scheduler.get_last_lr()[-1]})
            if self.cfg.max_steps is not None and self.step >= self.cfg.max_steps:
                break
        mean_loss = torch.stack(losses).mean().item() if losses else math.nan
        return {"samples": seen, "skipped": dict(skipped), "loss": mean_loss,
                "data_s": round(data_time, 3), "compute_s": round(compute_time, 3)}


class MetricsLog:
    """Appends one JSON object per line to `metrics.jsonl`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
