"""What every `transformers`-backed encoder shares: finding its blocks, freezing all but the top k, checkpointing."""

from __future__ import annotations

from typing import Any

import torch

from .base import Encoder


def hf_layers(backbone: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a `transformers` model, wherever its version keeps them ([] if not found)."""
    for path in ("encoder.layer", "encoder.layers", "layers", "layer"):
        node: Any = backbone
        for part in path.split("."):
            node = getattr(node, part, None)
        if isinstance(node, torch.nn.ModuleList):
            return list(node)
    return []


class HFEncoder(Encoder):
    """Base of encoders whose `self.backbone` is a `transformers` model."""

    backbone: torch.nn.Module

    def lock(self, unlocked_layers: int = 0) -> None:
        super().lock()
        if unlocked_layers:
            for layer in hf_layers(self.backbone)[-unlocked_layers:]:
                layer.requires_grad_(True)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # transformers >= 5.x names it activation checkpointing (the old names warn); older releases have only those
        new = hasattr(self.backbone, "activation_checkpointing_enable")
        if enable:
            (self.backbone.activation_checkpointing_enable if new else self.backbone.gradient_checkpointing_enable)()
        else:
            (self.backbone.activation_checkpointing_disable if new else self.backbone.gradient_checkpointing_disable)()

    @property
    def grad_checkpointing(self) -> bool:
        """Whether the backbone recomputes activations in the backward pass."""
        flag = getattr(self.backbone, "is_activation_checkpointing", None)
        return bool(flag if flag is not None else self.backbone.is_gradient_checkpointing)
