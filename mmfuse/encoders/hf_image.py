"""Image encoders from Hugging Face `transformers` (`ViTModel`, DeiT, DINOv2, BEiT ... through `AutoModel`), by hub
name or local directory; the image processor's size, mean and std drive the shared `ImagePreprocessor`.

Batch entry: `image` (B, 3, S, S) float.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from .base import EncoderOutput, masked_mean
from .hf_common import HFEncoder
from .registry import register_encoder
from .timm_image import ImagePreprocessor


class HFImageEncoder(HFEncoder):
    """Wraps a `transformers` vision transformer.

    Inputs: batch["image"] (B, 3, S, S). Returns: tokens (B, T, D) ([CLS] + patches), mask (B, T) all True,
    pooled (B, D): the [CLS] state (`pooling="cls"`) or the mean of all tokens (`"mean"`).
    """

    modality = "image"

    def __init__(self, backbone: torch.nn.Module, processor: Any, pooling: str = "cls") -> None:
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ConfigError(f"image encoder pooling must be 'cls' or 'mean', got '{pooling}'")
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None  # unused; drop it so every parameter gets a gradient
        self.backbone, self.processor, self.pooling = backbone, processor, pooling
        self.width = backbone.config.hidden_size
        size = getattr(backbone.config, "image_size", 224)
        size = size if isinstance(size, int) else size[0]
        mean = tuple(getattr(processor, "image_mean", None) or (0.5, 0.5, 0.5))
        std = tuple(getattr(processor, "image_std", None) or (0.5, 0.5, 0.5))
        self.preprocessor = ImagePreprocessor(size, mean, std)

    def forward(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        tokens = self.backbone(pixel_values=batch["image"]).last_hidden_state  # (B, T, D)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        pooled = tokens[:, 0] if self.pooling == "cls" else masked_mean(tokens, mask)
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pooled)

    def save_assets(self, directory: str) -> dict[str, Any]:
        self.processor.save_pretrained(directory)
        self.backbone.config.save_pretrained(directory)
        return {"model": directory}


@register_encoder("hf-image")
def hf_image(model: str = "google/vit-base-patch16-224-in21k", pretrained: bool = True, pooling: str = "cls",
             attn_implementation: str = "sdpa") -> HFImageEncoder:
    """Any `transformers` vision `AutoModel` (ViT family) by hub name or local directory."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    try:
        processor = AutoImageProcessor.from_pretrained(model)
        if pretrained:
            backbone = AutoModel.from_pretrained(model, attn_implementation=attn_implementation)
        else:
            backbone = AutoModel.from_config(AutoConfig.from_pretrained(model), attn_implementation=attn_implementation)
    except (OSError, ValueError) as err:
        where = "local directory" if Path(model).exists() else "hub name (no network? pass a local directory)"
        raise ConfigError(f"cannot load image model '{model}' as a {where}: {str(err).splitlines()[0]}") from None
    return HFImageEncoder(backbone, processor, pooling)
