"""The encoder protocol every backend answers (open_clip's adapters, timm's uniform API).

An encoder turns its modality's batch entries into
    tokens  (B, T, D)  per-token states,
    mask    (B, T)     True where a token is real (not padding),
    pooled  (B, D)     one vector per sample,
and carries its own preprocessing (`encoder.preprocessor`), so the loader asks the encoder how to prepare input.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class EncoderOutput:
    """What an encoder returns. Shapes: tokens (B, T, D), mask (B, T) bool, pooled (B, D)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor


class Preprocessor(ABC):
    """Turns raw values of one modality into batch tensors. Picklable, holds no weights (safe in loader workers).

    `transform` runs per sample (decode, resize); `collate` joins a list of transformed values into batch entries.
    A missing value is `None`; `collate` fills a neutral placeholder for it and the caller records presence.
    """

    modality: str

    @abstractmethod
    def transform(self, value: Any) -> Any:
        """One raw value (str, image bytes / array, ...) -> one transformed sample."""

    @abstractmethod
    def collate(self, values: list[Any]) -> dict[str, torch.Tensor]:
        """Transformed samples (None where absent) -> batch entries keyed e.g. `text_ids`, `text_mask`."""


class Encoder(nn.Module, ABC):
    """Base class of all encoders. Subclasses set `modality`, `width` and `preprocessor`.

    `pretrained` says whether the weights came from a pretrained checkpoint (set by `create_encoder`; False for the
    encoders registered `random_init`): the recipe freezes and caches such towers first and
    trains them at `train.encoder_lr`, while a random-init tower trains at the head's rate.
    """

    modality: str
    width: int
    preprocessor: Preprocessor
    pretrained: bool = False
    family: str = "transformer"
    """transformer | cnn | mlp: what dominates the tower's compute, which decides its precision on a CPU
    (`mmfuse.precision.tower_autocast`) and its memory layout."""

    @abstractmethod
    def forward(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        """Encode this modality's entries of `batch`."""

    def lock(self, unlocked_layers: int = 0) -> None:
        """Freeze the encoder's parameters (all of them; `unlocked_layers` is honoured by backends that can)."""
        for p in self.parameters():
            p.requires_grad_(False)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory where the backend supports it."""

    def save_assets(self, directory: str) -> dict[str, Any]:
        """Write what is needed to rebuild this encoder offline (tokenizer, backbone config) into `directory`.

        Returns keyword overrides for `create_encoder` that point at the written assets. Default: nothing to write.
        """
        return {}


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens. Inputs: tokens (B, T, D), mask (B, T). Returns: (B, D)."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)  # (B, T, 1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)
