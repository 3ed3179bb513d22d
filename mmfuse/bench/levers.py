"""Lever cases: one speed lever on ("mmfuse") vs off ("baseline"), interleaved in the same run, as a ratio.

    cache        an epoch over the split with every tower frozen: cached encoder outputs (no decode, no encode, no
                 tar reading; `FeatureCache`'s loader lookups and `CachedEncoder`s, swapped into the model for
                 that epoch only) vs decoding and encoding each batch. The one-time cache build is
                 reported as `cache_build_s`, and both epochs' mean losses from the same start (`losses`): frozen
                 towers in eval mode give the same features, so the two must agree.
    compile      `Trainer.train_step` on a `torch.compile`d model vs eager (compile time in `compile_s`)
    grad-ckpt    `Trainer.train_step` with encoder gradient checkpointing vs without (a memory lever: ratio < 1)
    fused-adamw  `Trainer.train_step` with AdamW(fused=True) (the trainer's default) vs AdamW(foreach=True)
    channels-last  `Trainer.train_step` with the CNN towers channels-last (NHWC, their default) vs contiguous (NCHW)
    precision    `Trainer.train_step` under bf16 autocast vs fp32, per tower family; beside the speed ratio, a short
                 run of two copies from the same start on the same batches (`quality`: train loss, val loss and
                 accuracy in either precision), since bf16 is a lever only if it learns as well
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from ..config import TrainConfig
from ..data.loader import make_loader
from ..model import EncoderSpec, FusionModel
from ..precision import autocast
from ..tasks.classification import ClassificationTask
from ..train.feature_cache import FeatureCache
from ..train.freeze import apply_freeze
from ..train.optim import param_groups, warmup_cosine
from ..train.trainer import EpochTally, Trainer
from .common import Context, case_batches, case_model, case_result, repeat_steps
from .presets import CaseSpec
from .timing import PeakMemory, interleaved, timed

LEVERS = ("cache", "compile", "grad-ckpt", "fused-adamw", "channels-last", "precision")
QUALITY_STEPS = 24
"""Train steps of the precision lever's short run (over the first four batches of the train split)."""


def _trainer(model: FusionModel, ctx: Context) -> Trainer:
    cfg = TrainConfig(device=str(ctx.device), precision=ctx.precision, progress=False, lr=1e-4)
    trainer = Trainer(model, ClassificationTask.for_head(model), cfg, ctx.device, total_steps=1_000_000)
    trainer.model.train()
    return trainer


def _lever_cache(ctx: Context, spec: CaseSpec) -> tuple[Callable[[], int], Callable[[], int], dict[str, Any]]:
    model = case_model(ctx, spec)
    apply_freeze(model, list(spec.modalities))
    trainer = _trainer(model, ctx)
    split = spec.split or ctx.split
    base = model.preprocessors()
    tick = time.perf_counter()
    cache = FeatureCache(model, _specs(spec), ctx.info, ctx.device, ctx.precision, spec.batch_size,
                         echo=lambda *_: None)
    source = cache.source(split)
    build_s = time.perf_counter() - tick

    def epoch(cached: bool) -> tuple[int, float]:
        if cached:  # the towers' CachedEncoders in the model for this epoch, the loader looking them up by key
            cache.install(trainer.model)
            loader = make_loader(ctx.info, split, base, spec.batch_size, drop_last=True, **source)
        else:
            loader = make_loader(ctx.info, split, base, spec.batch_size, num_workers=ctx.cfg.workers, drop_last=True)
        tally = EpochTally()
        try:
            for step in trainer.steps(loader):
                tally.add(step)
        finally:
            cache.uninstall(trainer.model)
        return tally.samples, float(tally.loss_sum) / max(1, tally.batches)

    # the same start state through both paths: the mean losses must agree (frozen towers give the same features)
    start = [copy.deepcopy(x.state_dict()) for x in (trainer.model, trainer.optimizer, trainer.scheduler)]
    losses = {}
    for name, cached in (("mmfuse", True), ("baseline", False)):
        for x, state in zip((trainer.model, trainer.optimizer, trainer.scheduler), start, strict=True):
            x.load_state_dict(state)
        torch.manual_seed(0)  # the same dropout masks
        losses[name] = round(epoch(cached)[1], 6)
    return (lambda: epoch(True)[0], lambda: epoch(False)[0],
            {"cache_build_s": round(build_s, 3), "samples_per_repeat": ctx.info.count(split), "losses": losses,
             "baseline": "an epoch decoding and encoding every batch (towers frozen, in eval mode)"})


def _specs(spec: CaseSpec) -> dict[str, EncoderSpec]:
    return {m: EncoderSpec(**s) for m, s in spec.encoders().items()}


def _step_pair(ctx: Context, spec: CaseSpec, configure: Callable[[Trainer, bool], dict[str, Any]]
               ) -> tuple[Callable[[], int], Callable[[], int], dict[str, Any]]:
    """Two trainers on identical model copies, the lever on for the first; each workload is one train step."""
    model = case_model(ctx, spec)
    quality = {"quality": _quality(ctx, spec, model)} if spec.lever == "precision" else {}
    on, off = _trainer(model, ctx), _trainer(copy.deepcopy(model), ctx)
    extra = {**configure(on, True), **configure(off, False), **quality}
    batch = case_batches(ctx, model, spec)[0]

    def step(trainer: Trainer) -> Callable[[], int]:
        return lambda: (trainer.train_step(batch), spec.batch_size)[1]

    tick = time.perf_counter()
    step(on)()  # the first call of a compiled model compiles it
    extra.setdefault("first_step_s", round(time.perf_counter() - tick, 3))
    return step(on), step(off), extra


def _compile(trainer: Trainer, on: bool) -> dict[str, Any]:
    if on:
        trainer.model.compile()
    return {"baseline": "the same train step, eager"}


def _grad_ckpt(trainer: Trainer, on: bool) -> dict[str, Any]:
    for encoder in trainer.model.encoders.values():
        encoder.set_grad_checkpointing(on)
    return {"baseline": "the same train step without gradient checkpointing"}


def _foreach_adamw(trainer: Trainer, on: bool) -> dict[str, Any]:
    if not on:
        trainer.optimizer = torch.optim.AdamW(param_groups(trainer.model, trainer.cfg), lr=trainer.cfg.lr,
                                              foreach=True)
        trainer.scheduler = warmup_cosine(trainer.optimizer, trainer.total_steps, trainer.cfg.warmup)
    return {"baseline": "the same train step with AdamW(foreach=True)"}


def _channels_last(trainer: Trainer, on: bool) -> dict[str, Any]:
    for encoder in trainer.model.encoders.values():
        if hasattr(encoder, "set_channels_last"):
            encoder.set_channels_last(on)
    return {"baseline": "the same train step with the CNN towers contiguous (NCHW)"}


def _bf16(trainer: Trainer, on: bool) -> dict[str, Any]:
    trainer.precision = "bf16" if on else "fp32"
    return {"baseline": "the same train step in fp32 (no autocast)"}


STEP_LEVERS = {"compile": _compile, "grad-ckpt": _grad_ckpt, "fused-adamw": _foreach_adamw,
               "channels-last": _channels_last, "precision": _bf16}


@torch.no_grad()
def _evaluate(trainer: Trainer, batches: list[dict[str, Any]]) -> dict[str, float]:
    """Mean loss and accuracy of `trainer`'s model over `batches`, under the trainer's own precision."""
    trainer.model.eval()
    loss = correct = total = 0.0
    for batch in batches:
        with autocast(trainer.device, trainer.precision):
            logits = trainer.model(batch)
        loss += float(F.cross_entropy(logits.float(), batch["label"], reduction="sum"))
        correct += float((logits.argmax(-1) == batch["label"]).sum())
        total += len(batch["label"])
    trainer.model.train()
    return {"val_loss": round(loss / total, 4), "val_accuracy": round(correct / total, 4)}


def _quality(ctx: Context, spec: CaseSpec, model: FusionModel) -> dict[str, Any]:
    """Two copies of `model` trained `QUALITY_STEPS` steps (the default lr, a schedule over those steps), one under
    bf16 autocast and one in fp32, from the same start on the same real train batches (the demo's titles and
    images: learnable, unlike the timed batch's random ids), then scored on val batches in their own precision."""
    plain = replace(spec, text_tokens=None)
    train = case_batches(ctx, model, plain, n=4)
    val = case_batches(replace(ctx, split="val"), model, plain, n=4)
    quality: dict[str, Any] = {"steps": QUALITY_STEPS, "train_batches": len(train),
                               "val_samples": sum(len(b["label"]) for b in val)}
    for name, precision in (("mmfuse", "bf16"), ("baseline", "fp32")):
        cfg = TrainConfig(device=str(ctx.device), precision=precision, progress=False, warmup=0.1)
        copied = copy.deepcopy(model)
        trainer = Trainer(copied, ClassificationTask.for_head(copied), cfg, ctx.device, total_steps=QUALITY_STEPS)
        trainer.model.train()
        torch.manual_seed(0)  # the same dropout masks
        losses = [float(trainer.train_step(train[i % len(train)])) for i in range(QUALITY_STEPS)]
        quality[name] = {"precision": precision, "train_loss_first": round(losses[0], 4),
                         "train_loss_last": round(sum(losses[-4:]) / 4, 4), **_evaluate(trainer, val)}
    quality["val_loss_delta"] = round(quality["mmfuse"]["val_loss"] - quality["baseline"]["val_loss"], 4)
    quality["val_accuracy_delta"] = round(quality["mmfuse"]["val_accuracy"] - quality["baseline"]["val_accuracy"],
                                          4)
    return quality


def run_lever(ctx: Context, spec: CaseSpec) -> dict[str, Any]:
    """Lever on vs off, interleaved; the ratio is on / off throughput."""
    repeats = min(ctx.cfg.repeats, spec.max_repeats or ctx.cfg.repeats)
    if spec.lever == "cache":
        on, off, extra = _lever_cache(ctx, spec)  # its loss check ran each path once: no further warm-up
        steps, warmup = 1, 0
    else:
        on, off, extra = _step_pair(ctx, spec, STEP_LEVERS[spec.lever])
        for _ in range(ctx.cfg.warmup):
            on(), off()
        steps = repeat_steps(timed(off, ctx.device)[0], ctx.cfg.min_time)
        warmup = 0
    with PeakMemory(ctx.device) as memory:
        rates = interleaved({"mmfuse": on, "baseline": off}, ctx.device, repeats, warmup, group=steps)
    return case_result(spec, rates, steps, lever=spec.lever, memory={"kind": memory.kind, "bytes": memory.bytes},
                       **extra)
