"""Parameter-efficient fine-tuning per tower through `peft`: LoRA or IA3 adapters injected into an encoder.

A policy is part of the model config (`model.adapters`), e.g. `{"text": {"method": "lora", "r": 8}}`: the named
tower's backbone gets adapters on its attention projections and its own weights are frozen; other towers train as
configured. Adapters are saved with the model's weights, so a checkpoint reloads with them.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .errors import ConfigError

METHODS = ("lora", "ia3")


def _targets(encoder: nn.Module, options: dict[str, Any]) -> list[str]:
    targets = options.get("targets") or getattr(encoder, "adapter_targets", None)
    if not targets:
        raise ConfigError(f"{type(encoder).__name__} names no default adapter targets; set targets: [module names]")
    return list(targets)


def _peft_config(encoder: nn.Module, options: dict[str, Any]) -> Any:
    from peft import IA3Config, LoraConfig

    method = options.get("method", "lora")
    known = {"method", "targets", "r", "alpha", "dropout"}
    if method not in METHODS:
        raise ConfigError(f"adapter method must be one of {', '.join(METHODS)}, got '{method}'")
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown adapter option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    targets = _targets(encoder, options)
    if method == "ia3":
        return IA3Config(target_modules=targets, feedforward_modules=[])
    r = int(options.get("r", 8))
    return LoraConfig(r=r, lora_alpha=float(options.get("alpha", 2 * r)),
                      lora_dropout=float(options.get("dropout", 0.0)), target_modules=targets)


def apply_adapters(encoders: dict[str, nn.Module], policy: dict[str, dict[str, Any]]) -> None:
    """Inject adapters into `encoders[tower].backbone` for each tower of `policy` and freeze its base weights."""
    from peft import inject_adapter_in_model

    for tower, options in policy.items():
        if tower not in encoders:
            raise ConfigError(f"model.adapters names '{tower}', but the towers are {', '.join(sorted(encoders))}")
        encoder = encoders[tower]
        backbone = encoder.backbone
        for param in backbone.parameters():
            param.requires_grad_(False)
        try:
            inject_adapter_in_model(_peft_config(encoder, dict(options)), backbone)
        except ValueError as err:  # e.g. no module matches the targets
            raise ConfigError(f"cannot add adapters to the {tower} tower: {str(err).splitlines()[0]}") from None
        for name, param in backbone.named_parameters():
            if "lora_" in name or "ia3_" in name:
                param.requires_grad_(True)
