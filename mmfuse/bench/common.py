"""What every bench case shares: the `Context`, the case's model and batches, and the result dict."""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch

from ..data.batch import to_device
from ..data.info import DatasetInfo
from ..data.loader import build_pipeline
from ..errors import ConfigError
from ..model import FusionModel, ModelConfig
from ..tasks import create_model_and_task
from .presets import BenchConfig, CaseSpec
from .timing import paired_ratio, summarize


@dataclass
class Context:
    """What every case needs: the options, the resolved device and precision, and the dataset."""

    cfg: BenchConfig
    device: torch.device
    precision: str
    info: DatasetInfo
    split: str = "train"


def case_model(ctx: Context, spec: CaseSpec) -> FusionModel:
    """The case's model, built from seed 0, with the dataset's labels."""
    torch.manual_seed(0)
    config = ModelConfig(list(spec.modalities), spec.encoders(), labels=list(ctx.info.labels), fusion=spec.fusion)
    return create_model_and_task(config)[0]


def case_batches(ctx: Context, model: FusionModel, spec: CaseSpec, n: int = 1) -> list[dict[str, Any]]:
    """The first `n` full batches of the split, decoded by the loader and moved to the device."""
    pipeline = build_pipeline(ctx.info, ctx.split, model.preprocessors(), spec.batch_size, drop_last=True)
    batches = [to_device(b, ctx.device) for b in islice(pipeline, n)]
    if not batches:
        raise ConfigError(f"split '{ctx.split}' of {ctx.info.root} has fewer than {spec.batch_size} samples; "
                          f"lower --batch-size")
    if spec.text_tokens:
        generator = torch.Generator().manual_seed(0)
        vocab = model.encoders["text"].preprocessor.tokenizer.vocab_size
        for b in batches:
            shape = (spec.batch_size, spec.text_tokens)
            b["text_ids"] = torch.randint(1, vocab, shape, generator=generator).to(ctx.device)
            b["text_mask"] = torch.ones(shape, dtype=torch.bool, device=ctx.device)
    return batches


def repeat_steps(seconds_per_step: float, min_time: float) -> int:
    """Steps per repeat so that a repeat lasts at least `min_time`."""
    return max(1, math.ceil(min_time / max(seconds_per_step, 1e-9)))


def case_result(spec: CaseSpec, measured: tuple[dict[str, list[float]], dict[str, list[float]]], steps: int,
                **extra: Any) -> dict[str, Any]:
    """A case's result dict (`report.SCHEMA`) from its interleaved rates, steps per repeat and extra fields."""
    rates, cpu_rates = measured
    series = {name: summarize(values) for name, values in rates.items()}
    ratio = paired_ratio(rates["mmfuse"], rates["baseline"]) if "baseline" in rates else None
    cpu_ratio = paired_ratio(cpu_rates["mmfuse"], cpu_rates["baseline"]) if "baseline" in rates else None
    return {"name": spec.name, "kind": spec.kind, "towers": spec.towers, "modalities": list(spec.modalities),
            "fusion": spec.fusion if spec.kind in ("train", "embed") else None, "batch_size": spec.batch_size,
            "steps_per_repeat": steps, "unit": "samples/s", "series": series, "ratio": ratio, "cpu_ratio": cpu_ratio,
            "cpu_series": {name: summarize(values) for name, values in cpu_rates.items()},
            "flops_per_sample": None, "mfu": None, "split": None, **extra}
