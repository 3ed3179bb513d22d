"""AdamW with per-tower learning rates and decay / no-decay groups, and a warm-up + cosine schedule."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from .layer_decay import layer_scales

if TYPE_CHECKING:
    from ..config import TrainConfig


def _group_of(name: str) -> str:
    """'encoders.text.backbone...' -> 'text'; fusion, projections and head -> 'head'."""
    parts = name.split(".")
    return parts[1] if parts[0] == "encoders" else "head"


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Trainable parameters grouped by hyperparameters. Learning rates (`tower_rates`): `tower_lr[tower]`, else
    `encoder_lr` (default `lr` / 20) for a tower holding pretrained weights, else `lr` (head, fusion, random-init
    towers), times the layer-wise decay factor with `cfg.layer_decay` (see `layer_decay.py`). No weight decay on
    biases, norms and embeddings.

    Towers with equal hyperparameters share a group (named e.g. 'head+image'): each group is one more fused-AdamW
    call per step (`mmfuse bench` measured the extra calls at 1-2% of a small model's step on CPU).
    """
    scales = layer_scales(model, cfg.layer_decay) if cfg.layer_decay is not None else {}
    groups: dict[tuple[str, float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim < 2 or "embed" in name or "norm" in name.lower() or "token" in name
        groups.setdefault((_group_of(name), scales.get(name, 1.0), no_decay), []).append(param)

    rates = tower_rates(model, cfg)

    def lr_of(tower: str) -> float:
        return rates.get(tower, cfg.lr)

    merged: dict[tuple[float, float], dict] = {}
    for (tower, scale, no_decay), params in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1], kv[0][2])):
        lr, decay = lr_of(tower) * scale, 0.0 if no_decay else cfg.weight_decay
        group = merged.setdefault((lr, decay), {"params": [], "lr": lr, "weight_decay": decay, "towers": []})
        group["params"] += params
        label = tower if scale == 1.0 else f"{tower}@{scale:.3g}"
        if label not in group["towers"]:
            group["towers"].append(label)
    return [{"params": g["params"], "lr": g["lr"], "weight_decay": g["weight_decay"],
             "name": "+".join(g["towers"]) + ("-no-decay" if g["weight_decay"] == 0.0 else "")}
            for g in merged.values()]


def tower_rates(model: nn.Module, cfg: TrainConfig) -> dict[str, float]:
    """The peak learning rate of each tower of `model` (keyed by modality) and of `head` (fusion, projections,
    head): `tower_lr` wins; then a tower holding pretrained weights (`Encoder.pretrained`) learns at `encoder_lr`,
    or `lr` / ENCODER_LR_DIVISOR when unset, and a random-init tower at `lr`."""
    from ..config import ENCODER_LR_DIVISOR

    rates = {"head": cfg.tower_lr.get("head", cfg.lr)}
    for m, encoder in getattr(model, "encoders", {}).items():
        pretrained_rate = cfg.encoder_lr if cfg.encoder_lr is not None else cfg.lr / ENCODER_LR_DIVISOR
        rates[m] = cfg.tower_lr.get(m, pretrained_rate if getattr(encoder, "pretrained", False) else cfg.lr)
    return rates


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, fused where the device supports it (27-38% faster than the per-tensor default on CPU)."""
    groups = param_groups(model, cfg)
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    except (RuntimeError, TypeError):  # device or torch version without a fused kernel
        return torch.optim.AdamW(groups, lr=cfg.lr, foreach=device.type == "cuda")


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int,
                  warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup` of the steps, then cosine decay to zero at `total_steps`."""
    warmup_steps = max(1, int(round(warmup * total_steps)))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
