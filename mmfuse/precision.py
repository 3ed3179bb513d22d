"""Device and mixed-precision choice by hardware."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from functools import lru_cache

import torch

from .errors import ConfigError

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; an unavailable CUDA device is a `ConfigError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}' (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available on this machine")
    return device


#: Overrides the CPU check: "0" treats the CPU as without fast bf16 (fp32 under `auto`), "1" as with it.
CPU_BF16_ENV = "MMFUSE_CPU_BF16"


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has avx512_bf16 or AMX, the only CPUs where bf16 matmul beats fp32.

    `MMFUSE_CPU_BF16=0|1` overrides the check (run the test suite both ways, see CONTRIBUTING)."""
    override = os.environ.get(CPU_BF16_ENV, "").strip()
    if override in ("0", "1"):
        return override == "1"
    if override:
        raise ConfigError(f"{CPU_BF16_ENV} must be 0 or 1, got '{override}'")
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


BF16_MIN_WIDTH = 256
"""On a CPU, `auto` picks bf16 only for a model with an encoder at least this wide: bf16 autocast pays where wide
matmuls dominate a step and costs where casts and small ops do (the bench's precision lever; the rule and its
figures are in benchmarks/README.md)."""


def choose_precision(device: torch.device, requested: str = "auto", model: torch.nn.Module | None = None) -> str:
    """Resolve 'auto' to fp32 / bf16 / fp16 for `device` (and, on a CPU, for `model`).

    CUDA: bf16 where supported, else fp16. CPU: bf16 where it has avx512_bf16 / AMX (`cpu_has_fast_bf16`) and
    `model` (if given) has an encoder of width >= `BF16_MIN_WIDTH`; else fp32.
    """
    if requested != "auto":
        if requested == "fp16" and device.type == "cpu":
            raise ConfigError("fp16 autocast is not supported on the CPU; use bf16 or fp32")
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_fast_bf16() and (model is None or widest_encoder(model) >= BF16_MIN_WIDTH):
        return "bf16"
    return "fp32"


def widest_encoder(model: torch.nn.Module) -> int:
    """The largest `width` among `model.encoders` (0 without encoders)."""
    encoders = getattr(model, "encoders", None) or {}
    return max((int(getattr(e, "width", 0)) for e in encoders.values()), default=0)


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """The autocast context for a resolved precision (a no-op for fp32)."""
    dtype = DTYPES[precision]
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


CPU_BF16_FAMILIES = frozenset({"transformer"})
"""Tower families (`Encoder.family`) that run under a CPU bf16 autocast; the others run in fp32 inside it. bf16
pays on a CPU where wide matmuls dominate a step, and not for convolutions or small MLPs: figures per family in
benchmarks/README.md (`mmfuse bench --cases lever --only precision`)."""


def tower_autocast(encoder: torch.nn.Module) -> AbstractContextManager:
    """Inside a CPU bf16 autocast, the context an encoder runs in: unchanged for a family in `CPU_BF16_FAMILIES`,
    autocast off (fp32) for the others. CUDA autocast is left as it is (bf16 / fp16 pay for every family there)."""
    if torch.is_autocast_enabled("cpu") and getattr(encoder, "family", "transformer") not in CPU_BF16_FAMILIES:
        return torch.autocast("cpu", enabled=False)
    return nullcontext()
