"""Image encoders from `timm` (ViT by default, any timm model name), plus the `tiny-image` random-init preset.

Batch entry: `image` (B, 3, S, S) float, resized and normalised by the encoder's own preprocessor.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import Encoder, EncoderOutput, Preprocessor
from .image_io import decode_image
from .local_weights import load_by_position, names_match, read_state_dict
from .registry import register_encoder

__all__ = ["ImagePreprocessor", "TimmImageEncoder", "decode_image"]


class ImagePreprocessor(Preprocessor):
    """Decodes, resizes (bilinear, antialiased) to `size`x`size` and normalises with `mean` / `std`; a training
    loader's `augment` (`mmfuse.data.augment.ImageAugment`, bound to the sample) runs between resize and normalise."""

    modality = "image"

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.size = size
        self.mean = torch.tensor(mean).view(3, 1, 1) * 255.0
        self.std = torch.tensor(std).view(3, 1, 1) * 255.0

    def transform(self, value: Any, augment: Callable[[torch.Tensor], torch.Tensor] | None = None
                  ) -> torch.Tensor | None:
        if value is None:
            return None
        image = self.resize(decode_image(value).float())  # (3, S, S) in [0, 255]
        if augment is not None:
            image = augment(image)
        return (image - self.mean) / self.std

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) float in [0, 255] -> (3, S, S), S = `size`."""
        if image.shape[-2:] != (self.size, self.size):
            image = F.interpolate(image[None], size=(self.size, self.size), mode="bilinear", antialias=True,
                                  align_corners=False)[0]
        return image

    def collate(self, values: list[torch.Tensor | None]) -> dict[str, torch.Tensor]:
        blank = torch.zeros(3, self.size, self.size)
        return {"image": torch.stack([v if v is not None else blank for v in values])}


class TimmImageEncoder(Encoder):
    """Wraps a `timm` model without its classifier.

    Inputs: batch["image"] (B, 3, S, S).
    Returns: tokens (B, T, D) (ViT tokens incl. prefix, or a CNN's flattened feature map), mask (B, T) all True,
    pooled (B, D) from the model's own head pooling (`forward_head(pre_logits=True)`).
    """

    modality = "image"
    adapter_targets = ("qkv",)  # timm ViT attention input projection

    def __init__(self, backbone: torch.nn.Module, image_size: int | None = None) -> None:
        """`image_size` None: the backbone's pretrained input size; mean / std always come from its config."""
        super().__init__()
        import timm.data

        self.backbone = backbone
        self.width = backbone.num_features
        cfg = timm.data.resolve_data_config({}, model=backbone)
        size = image_size if image_size is not None else int(cfg["input_size"][-1])
        self.preprocessor = ImagePreprocessor(size, tuple(cfg["mean"]), tuple(cfg["std"]))
        self.family = "cnn" if is_cnn(backbone) else "transformer"
        self.memory_format = torch.contiguous_format
        self.set_channels_last(self.family == "cnn")

    def set_channels_last(self, enable: bool = True) -> None:
        """Lay a CNN's weights and inputs out channels-last (NHWC), the layout oneDNN's and cuDNN's convolutions
        run fastest in (the bench's `channels-last` lever); on by default for CNN backbones."""
        self.memory_format = torch.channels_last if enable else torch.contiguous_format
        self.backbone.to(memory_format=self.memory_format)

    def forward(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        features = self.backbone.forward_features(batch["image"].contiguous(memory_format=self.memory_format))
        pooled = self.backbone.forward_head(features, pre_logits=True)  # (B, D)
        tokens = features if features.ndim == 3 else features.flatten(2).transpose(1, 2)  # (B, T, D)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pooled)

    def lock(self, unlocked_layers: int = 0) -> None:
        super().lock()
        blocks = getattr(self.backbone, "blocks", None)
        if unlocked_layers and blocks is not None:
            for block in list(blocks)[-unlocked_layers:]:
                block.requires_grad_(True)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)


def is_cnn(backbone: torch.nn.Module) -> bool:
    """True for a convolutional backbone: 2-D convolutions beyond a ViT's patch embedding."""
    if hasattr(backbone, "patch_embed"):
        return False
    return any(isinstance(m, torch.nn.Conv2d) for m in backbone.modules())


def _create_timm(model: str, pretrained: bool, image_size: int | None, **kwargs: Any) -> torch.nn.Module:
    import timm

    if not timm.is_model(model.split(".")[0]):  # the architecture, without a pretrained tag
        raise ConfigError(f"unknown timm model '{model}' (see timm.list_models())")
    if pretrained and Path(model).exists():
        raise ConfigError(f"'{model}' is a path; pass a timm model name and `checkpoint={model}` instead")
    try:
        if image_size is None:  # the model's own input size
            return timm.create_model(model, pretrained=pretrained, num_classes=0, **kwargs)
        try:
            return timm.create_model(model, pretrained=pretrained, num_classes=0, img_size=image_size, **kwargs)
        except TypeError:  # CNNs take any input size and have no img_size argument
            return timm.create_model(model, pretrained=pretrained, num_classes=0, **kwargs)
    except (OSError, RuntimeError) as err:
        raise ConfigError(f"cannot load timm weights for '{model}' (no network? use pretrained=False or "
                          f"checkpoint=PATH): {str(err).splitlines()[0]}") from None


def _from_checkpoint(model: str, image_size: int | None, checkpoint: str, **kwargs: Any) -> torch.nn.Module:
    """timm `model` with the weights of a local file: through timm when the names are timm's (it drops the
    classifier and resamples a ViT's position embedding), else by position if every shape agrees."""
    state = read_state_dict(checkpoint)
    backbone = _create_timm(model, False, image_size, **kwargs)
    if names_match(backbone, state):
        del state, backbone
        return _create_timm(model, True, image_size, pretrained_cfg_overlay={"file": checkpoint}, **kwargs)
    load_by_position(backbone, state, checkpoint)
    return backbone


@register_encoder("timm-image")
def timm_image(model: str = "vit_base_patch16_224", pretrained: bool = True, image_size: int | None = None,
               checkpoint: str | None = None, **kwargs: Any) -> TimmImageEncoder:
    """Any timm model by name; `checkpoint` loads local weights (safetensors or a torch state dict: timm's names,
    or another implementation's whose tensors line up by position). `image_size` None: the model's pretrained
    input size (`pretrained_cfg`); mean / std always come from that config."""
    if checkpoint is not None:
        backbone = _from_checkpoint(model, image_size, checkpoint, **kwargs)
    else:
        backbone = _create_timm(model, pretrained, image_size, **kwargs)
    encoder = TimmImageEncoder(backbone, image_size)
    encoder.pretrained = pretrained or checkpoint is not None
    return encoder


@register_encoder("tiny-image", random_init=True)
def tiny_image(pretrained: bool = False, image_size: int = 64, patch_size: int = 8, width: int = 64,
               layers: int = 2, heads: int = 2) -> TimmImageEncoder:
    """A random-init timm ViT (`width`, `layers`, patch `patch_size`) for tests and the demo; never downloads.

    Mean-pooled patch tokens (no class token): from scratch it learns local cues such as edges and corners in a
    few epochs, where [CLS] pooling first has to learn to route them.
    """
    backbone = _create_timm("vit_tiny_patch16_224", False, image_size, patch_size=patch_size, embed_dim=width,
                            depth=layers, num_heads=heads, mlp_ratio=2.0, global_pool="avg", class_token=False)
    return TimmImageEncoder(backbone, image_size)
