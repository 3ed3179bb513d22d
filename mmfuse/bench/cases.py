"""The four cases. Each returns a plain result dict (see `report.SCHEMA`); MFU is filled in by the suite once the
calibration after the cases is known.

    loader  mmfuse's webdataset loader vs the raw decode loop over the same members (`rawdecode.py`)
    encode  inference throughput of one encoder on real batches
    train   `Trainer.train_step` -- the step `finetune` runs -- vs a minimal hand-written loop (fused AdamW) on an
            identical copy of the model and the same batch, interleaved; then a loader-fed pass through
            `Trainer.steps` for the data-wait vs compute split
    embed   `Embedder.embed` on raw records vs `FusionModel.embed` on the same, already collated batches
    text-embed  `Embedder.encode` (fp32, int8, onnx) vs sentence-transformers on the same weights (`textembed.py`)
    embed-backends  `Embedder.embed` fp32 vs int8 vs onnx on raw records, with cosine parity (`backends.py`)
"""

from __future__ import annotations

import copy
import gc
from contextlib import nullcontext
from itertools import islice
from typing import Any

import torch
import torch.nn.functional as F

from ..config import TrainConfig
from ..data.batch import batch_size as count
from ..data.loader import make_loader, read_records
from ..inference import Embedder
from ..model import FusionModel
from ..precision import DTYPES
from ..tasks.classification import ClassificationTask
from ..train.trainer import EpochTally, Trainer
from .backends import run_embed_backends
from .common import Context, case_batches, case_model, case_result, repeat_steps
from .presets import CaseSpec
from .rawdecode import raw_batches
from .textembed import run_text_embed
from .timing import PeakMemory, count_flops, interleaved, synchronize, timed


def run_loader(ctx: Context, spec: CaseSpec) -> dict[str, Any]:
    """One full pass over the split per repeat: mmfuse's loader vs the raw decode loop."""
    preprocessors = case_model(ctx, spec).preprocessors()
    split = spec.split or ctx.split

    def mmfuse() -> int:
        loader = make_loader(ctx.info, split, preprocessors, spec.batch_size, num_workers=ctx.cfg.workers)
        return sum(count(b) for b in loader)

    def raw() -> int:
        return sum(count(b) for b in raw_batches(ctx.info, split, preprocessors, spec.batch_size))

    with PeakMemory(torch.device("cpu")) as memory:
        rates = interleaved({"mmfuse": mmfuse, "baseline": raw}, torch.device("cpu"), ctx.cfg.repeats,
                            min(ctx.cfg.warmup, 1))
    return case_result(spec, rates, 1,
                       baseline="raw decode loop (direct tar parser + torchvision.io + one tokenizer call)",
                       workers=ctx.cfg.workers, samples_per_repeat=ctx.info.count(split),
                       memory={"kind": memory.kind, "bytes": memory.bytes})


def _compile(module: torch.nn.Module, ctx: Context) -> None:
    if ctx.cfg.compile:
        module.compile()


def _autocast(ctx: Context) -> Any:
    dtype = DTYPES[ctx.precision]
    return nullcontext() if dtype is None else torch.autocast(ctx.device.type, dtype=dtype)


def run_encode(ctx: Context, spec: CaseSpec) -> dict[str, Any]:
    """Inference throughput of the case's single encoder (eval mode, inference_mode, autocast as configured)."""
    model = case_model(ctx, spec)
    encoder = model.encoders[spec.modalities[0]].to(ctx.device).eval()
    _compile(encoder, ctx)
    batch = case_batches(ctx, model, spec)[0]

    @torch.inference_mode()
    def forward() -> None:
        with _autocast(ctx):
            encoder(batch)

    for _ in range(max(1, ctx.cfg.warmup)):
        forward()
    steps = repeat_steps(timed(lambda: forward() or 1, ctx.device)[0], ctx.cfg.min_time)

    def work() -> int:
        forward()
        return spec.batch_size

    with PeakMemory(ctx.device) as memory:
        rates = interleaved({"mmfuse": work}, ctx.device, ctx.cfg.repeats, warmup=0, group=steps)
    return case_result(spec, rates, steps, flops_per_sample=count_flops(forward) / spec.batch_size,
                       memory={"kind": memory.kind, "bytes": memory.bytes})


def hand_loop(model: FusionModel, ctx: Context, lr: float):
    """The baseline: a minimal PyTorch train step on `model` -- forward, cross-entropy, backward, fused AdamW."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=ctx.precision == "fp16")

    def step(batch: dict[str, Any]) -> None:
        with _autocast(ctx):
            logits = model(batch)
        loss = F.cross_entropy(logits.float(), batch["label"])
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def _interleave_steps(ctx: Context, trainer: Trainer, baseline_model: FusionModel, batch: dict[str, Any],
                      batch_size: int) -> tuple[Any, int, int]:
    """Interleaved repeats of `trainer.train_step` and the hand loop. Returns rates, steps per repeat, FLOPs/step."""
    hand_step = hand_loop(baseline_model, ctx, trainer.cfg.lr)
    flops = count_flops(lambda: hand_step(batch))  # also the baseline's first warm-up step
    for _ in range(ctx.cfg.warmup):
        trainer.train_step(batch)
        hand_step(batch)
    steps = repeat_steps(timed(lambda: (trainer.train_step(batch), 1)[1], ctx.device)[0], ctx.cfg.min_time)

    def run_mmfuse() -> int:
        trainer.train_step(batch)
        return batch_size

    def run_hand() -> int:
        hand_step(batch)
        return batch_size

    rates = interleaved({"mmfuse": run_mmfuse, "baseline": run_hand}, ctx.device, ctx.cfg.repeats, warmup=0,
                        group=steps)
    return rates, steps, flops


def run_train(ctx: Context, spec: CaseSpec) -> dict[str, Any]:
    """`Trainer.train_step` vs the hand loop on identical models and the same batch, then a loader-fed pass."""
    model = case_model(ctx, spec)
    baseline_model = copy.deepcopy(model).to(ctx.device).train()
    train_cfg = TrainConfig(device=str(ctx.device), precision=ctx.precision, progress=False, lr=1e-4)
    trainer = Trainer(model, ClassificationTask.for_head(model), train_cfg, ctx.device, total_steps=1_000_000)
    trainer.model.train()
    _compile(trainer.model, ctx)
    _compile(baseline_model, ctx)
    batch = case_batches(ctx, model, spec)[0]
    rates, steps, flops = _interleave_steps(ctx, trainer, baseline_model, batch, spec.batch_size)
    del baseline_model, batch  # the loader-fed pass below measures mmfuse's memory alone
    gc.collect()
    loader = make_loader(ctx.info, ctx.split, trainer.model.preprocessors(), spec.batch_size,
                         num_workers=ctx.cfg.workers, pin_memory=ctx.device.type == "cuda", drop_last=True)
    fed_steps = max(2, min(2 * steps, ctx.info.count(ctx.split) // spec.batch_size))
    with PeakMemory(ctx.device) as memory:
        tally = EpochTally()
        for step in trainer.steps(islice(loader, fed_steps)):
            tally.add(step)
    synchronize(ctx.device)
    busy = tally.data_s + tally.compute_s
    split = {"steps": fed_steps, "samples": tally.samples, "data_s": round(tally.data_s, 3),
             "compute_s": round(tally.compute_s, 3), "data_fraction": tally.data_s / busy if busy else 0.0,
             "samples_per_s": tally.samples / busy if busy else 0.0}
    return case_result(spec, rates, steps, flops_per_sample=flops / spec.batch_size, split=split,
                       baseline="hand-written loop: forward, cross_entropy, backward, AdamW(fused=True), zero_grad",
                       memory={"kind": memory.kind, "bytes": memory.bytes})


def run_embed(ctx: Context, spec: CaseSpec) -> dict[str, Any]:
    """`Embedder.embed` over raw records (decode + collate + model) vs `model.embed` on the collated batches."""
    embedder = Embedder(case_model(ctx, spec), ctx.device, batch_size=spec.batch_size, precision=ctx.precision)
    _compile(embedder.model, ctx)
    records = list(islice(read_records(ctx.info, ctx.split), 4 * spec.batch_size))
    collated = list(embedder.batches(records))

    def run_embedder() -> int:
        return len(embedder.embed(records))

    @torch.inference_mode()
    def run_model() -> int:  # the run's autocast, as Embedder.embed applies it
        with _autocast(ctx):
            return sum(embedder.model.embed(b).shape[0] for b in collated)

    with PeakMemory(ctx.device) as memory:
        rates = interleaved({"mmfuse": run_embedder, "baseline": run_model}, ctx.device, ctx.cfg.repeats,
                            ctx.cfg.warmup)
    flops = count_flops(run_model) / len(records)
    return case_result(spec, rates, 1, flops_per_sample=flops, samples_per_repeat=len(records),
                       baseline="FusionModel.embed on the same records, already decoded and collated",
                       memory={"kind": memory.kind, "bytes": memory.bytes})


RUNNERS = {"loader": run_loader, "encode": run_encode, "train": run_train, "embed": run_embed,
           "text-embed": run_text_embed, "embed-backends": run_embed_backends}
