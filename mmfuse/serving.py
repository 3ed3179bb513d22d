"""CPU serving backends for `mmfuse.load(..., backend=...)`: int8 dynamic quantisation, and the parity check (the
onnx backend, onnxruntime on an exported graph, lives in `onnx_export.py`).

int8 quantises the attention projections of the encoders (`torch.ao.quantization.quantize_dynamic`: int8 weights,
activations quantised per batch). Feed-forward layers, projections, fusion and head stay fp32: on CPUs without
VNNI the x86 kernels quantise activations to 7 bits, and quantising the feed-forward layers of all-MiniLM-L6-v2 too
drops the cosine to its fp32 vectors to 0.85-0.92; attention projections alone keep it >= 0.99.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from .errors import ConfigError

BACKENDS = ("fp32", "int8", "onnx")


def attention_linears(model: torch.nn.Module) -> set[str]:
    """Qualified names of the encoders' attention projection `nn.Linear` layers."""
    return {name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name.startswith("encoders.")
            and any(part in ("attention", "attn", "self_attn") or part.endswith("attention")
                    for part in name.split("."))}


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` whose encoders' attention projections run int8 dynamic quantisation (CPU only)."""
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    names = attention_linears(model)
    if not names:
        raise ConfigError("int8 backend: the model's encoders have no attention nn.Linear layers to quantise")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao quantisation announces its move to torchao on every call
        return quantize_dynamic(model, {name: default_dynamic_qconfig for name in names}, inplace=False)


def check_backend(backend: str, device: torch.device) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend '{backend}'; choose from {', '.join(BACKENDS)}")
    if backend in ("int8", "onnx") and device.type != "cpu":
        raise ConfigError(f"the {backend} backend runs on the CPU only; use device='cpu'")


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
