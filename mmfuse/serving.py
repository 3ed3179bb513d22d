"""Serving backends for `mmfuse.load(..., backend=...)`: bf16 weights, int8 dynamic quantisation, the choice by
hardware (`auto`), and the parity check (the onnx backend, onnxruntime on an exported graph, lives in
`onnx_export.py`).

bf16 casts the model's weights to bfloat16 (floating inputs are cast as they arrive; outputs come back as float32):
the fast path wherever bf16 matmuls are native (a CPU with avx512_bf16 / AMX, a CUDA GPU). Unlike autocast it does
not re-cast the weights on every call. Its vectors keep 8 bits of mantissa through every layer.

int8 quantises the attention projections of the encoders (`torch.ao.quantization.quantize_dynamic`: int8 weights,
activations quantised per batch). Feed-forward layers, projections, fusion and head stay fp32: on CPUs without
VNNI the x86 kernels quantise activations to 7 bits, and quantising the feed-forward layers of all-MiniLM-L6-v2 too
drops the cosine to its fp32 vectors to 0.85-0.92; attention projections alone keep it >= 0.99. On a CPU with VNNI,
full-range per-channel int8 on every linear layer still stays below 0.99 on that model (activation outliers in its
feed-forward outputs; figures in benchmarks/README.md), so int8 stays on the attention projections.

`auto` resolves by hardware to the fastest backend that kept cosine >= 0.99 to fp32 in the `text-embed` bench:
bf16 on a CUDA GPU and on a CPU with fast bf16, else fp32 (int8's gain on an AVX2-only CPU is within the noise).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from .errors import ConfigError

BACKENDS = ("fp32", "bf16", "int8", "onnx", "auto")


def attention_linears(model: torch.nn.Module) -> set[str]:
    """Qualified names of the encoders' attention projection `nn.Linear` layers."""
    return {name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name.startswith("encoders.")
            and any(part in ("attention", "attn", "self_attn") or part.endswith("attention")
                    for part in name.split("."))}


def quantize_int8(model: torch.nn.Module, scope: str = "attention") -> torch.nn.Module:
    """A copy of `model` with int8 dynamic quantisation (CPU only) of its encoders' attention projections
    (`scope='attention'`, the int8 backend), or of every encoder `nn.Linear` with per-channel weights
    (`scope='all'`: measured by the bench, not a backend, see above)."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    if scope == "all":
        names = {name for name, module in model.named_modules()
                 if isinstance(module, torch.nn.Linear) and name.startswith("encoders.")}
        qconfig = per_channel_dynamic_qconfig
    else:
        names, qconfig = attention_linears(model), default_dynamic_qconfig
    if not names:
        raise ConfigError("int8 backend: the model's encoders have no attention nn.Linear layers to quantise")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao quantisation announces its move to torchao on every call
        return quantize_dynamic(model, {name: qconfig for name in names}, inplace=False)


def check_backend(backend: str, device: torch.device) -> str:
    """Validate `backend` for `device`; returns it with `auto` resolved (see the module docstring)."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend '{backend}'; choose from {', '.join(BACKENDS)}")
    if backend == "auto":
        from .precision import cpu_has_fast_bf16

        return "bf16" if device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16()) else "fp32"
    if backend in ("int8", "onnx") and device.type != "cpu":
        raise ConfigError(f"the {backend} backend runs on the CPU only; use device='cpu'")
    return backend


def cast_inputs(batch: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """`batch` with its floating tensors (pixels, spectrograms) cast to `dtype`; ids, masks and the rest as they are."""
    return {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in batch.items()}


def cosine_parity(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Row-wise cosine similarity of two (N, D) embedding matrices: min, mean and N (rows that are zero in both
    count as equal)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    cos = np.where(both_zero, 1.0, (a * b).sum(1) / np.maximum(na * nb, 1e-12))
    return {"min": float(cos.min()) if len(cos) else 1.0, "mean": float(cos.mean()) if len(cos) else 1.0,
            "n": int(len(cos))}
