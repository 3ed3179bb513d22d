"""An AST-style spectrogram transformer: Kaldi log-mel frames + a `timm` ViT over the (mel x time) image.

Registered as `timm-audio` (any timm ViT, ImageNet weights adapted to one input channel, as AST does) and
`tiny-audio` (random init, for tests and the demo). Clips are padded to the longest in the batch, not to a fixed
length: the positional embedding is cropped to the clip's time patches (AST), and padding patches are excluded
from attention, so a clip gets the same encoding alone or padded in a batch.

Batch entries: `audio` (B, F, n_mels) log-mel frames, `audio_mask` (B, F) (see `audio_io.py`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from .audio_io import AudioPreprocessor, LogMelFrames
from .base import Encoder, EncoderOutput, masked_mean
from .registry import register_encoder

FRAME_SHIFT_S, WINDOW_S = 0.010, 0.025


class SpectrogramEncoder(Encoder):
    """A timm `VisionTransformer` over log-mel spectrograms.

    Inputs: batch["audio"] (B, F, M) frames x mel bins, batch["audio_mask"] (B, F).
    Returns: tokens (B, P + H*W, D) (P prefix tokens, H = M / patch_f mel rows, W = ceil(F / patch_t) time
    columns, row-major), mask (B, P + H*W) False for patches made only of padding, pooled (B, D) the masked mean
    of the real patch tokens.
    """

    modality = "audio"

    def __init__(self, backbone: torch.nn.Module, sample_rate: int, n_mels: int, max_seconds: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.width = backbone.num_features
        self.n_mels = n_mels
        self.patch_f, self.patch_t = backbone.patch_embed.patch_size
        self.grad_checkpointing = False
        self.preprocessor = AudioPreprocessor(sample_rate, max_seconds, LogMelFrames(sample_rate, n_mels))

    def forward(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        bb = self.backbone
        frames, frame_mask = batch["audio"], batch["audio_mask"]  # (B, F, M), (B, F)
        B, n_frames, _ = frames.shape
        max_h, max_w = bb.patch_embed.grid_size
        w = min(math.ceil(n_frames / self.patch_t), max_w)
        pad = w * self.patch_t - n_frames
        frames = F.pad(frames, (0, 0, 0, pad))[:, : w * self.patch_t]
        frame_mask = F.pad(frame_mask, (0, pad))[:, : w * self.patch_t]
        x = bb.patch_embed(frames.transpose(1, 2).unsqueeze(1))  # (B, H, W, D)
        h = x.shape[1]
        prefix = bb.num_prefix_tokens
        pos = bb.pos_embed  # (1, [P +] max_h * max_w, D)
        grid_pos = pos[:, pos.shape[1] - max_h * max_w:].reshape(1, max_h, max_w, -1)[:, :h, :w]
        x = (x + grid_pos).flatten(1, 2)  # (B, H*W, D)
        extra = [t.expand(B, -1, -1) for t in (bb.cls_token, bb.reg_token) if t is not None]
        if extra:
            extra = torch.cat(extra, dim=1)
            if not bb.no_embed_class:
                extra = extra + pos[:, :prefix]
            x = torch.cat([extra, x], dim=1)  # (B, P + H*W, D)
        x = bb.norm_pre(bb.pos_drop(x))

        column_real = frame_mask.view(B, w, self.patch_t).any(-1)  # (B, W)
        patch_mask = column_real[:, None, :].expand(B, h, w).reshape(B, h * w)
        has_audio = patch_mask.any(1, keepdim=True)  # (B, 1) prefix tokens are real when the clip is
        mask = torch.cat([has_audio.expand(B, prefix), patch_mask], dim=1)  # (B, T)
        attend = mask | ~mask.any(1, keepdim=True)  # an absent clip attends everywhere: finite placeholder
        attn_mask = attend[:, None, None, :]  # (B, 1, 1, T) True = may be attended to
        for block in bb.blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, attn_mask=attn_mask, use_reentrant=False)
            else:
                x = block(x, attn_mask=attn_mask)
        tokens = bb.norm(x)  # (B, T, D)
        pooled = masked_mean(tokens[:, prefix:], patch_mask)  # (B, D)
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pooled)

    def lock(self, unlocked_layers: int = 0) -> None:
        super().lock()
        if unlocked_layers:
            for block in list(self.backbone.blocks)[-unlocked_layers:]:
                block.requires_grad_(True)
            self.backbone.norm.requires_grad_(True)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable


def max_frames(sample_rate: int, max_seconds: float) -> int:
    """Number of log-mel frames of a `max_seconds` clip (25 ms windows every 10 ms, no partial window)."""
    samples = int(round(max_seconds * sample_rate))
    return 1 + max(0, samples - int(WINDOW_S * sample_rate)) // int(FRAME_SHIFT_S * sample_rate)


def _build(model: str, pretrained: bool, sample_rate: int, n_mels: int, max_seconds: float,
           patch_size: int | tuple[int, int], **kwargs: Any) -> SpectrogramEncoder:
    import timm
    from timm.models.vision_transformer import VisionTransformer

    patch = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    if n_mels % patch[0]:
        raise ConfigError(f"n_mels ({n_mels}) must be a multiple of the mel patch size ({patch[0]})")
    width = math.ceil(max_frames(sample_rate, max_seconds) / patch[1]) * patch[1]
    if not timm.is_model(model.split(".")[0]):  # the architecture, without a pretrained tag
        raise ConfigError(f"unknown timm model '{model}' (see timm.list_models('vit_*'))")
    try:
        backbone = timm.create_model(model, pretrained=pretrained, num_classes=0, in_chans=1, img_size=(n_mels, width),
                                     patch_size=patch, dynamic_img_size=True, **kwargs)
    except (OSError, RuntimeError) as err:
        raise ConfigError(f"cannot load timm weights for '{model}' (no network? use pretrained=False or "
                          f"checkpoint=PATH): {str(err).splitlines()[0]}") from None
    if not isinstance(backbone, VisionTransformer) or backbone.pos_embed is None:
        raise ConfigError(f"timm-audio needs a timm VisionTransformer with a learned position embedding, "
                          f"'{model}' is a {type(backbone).__name__}")
    return SpectrogramEncoder(backbone, sample_rate, n_mels, max_seconds)


@register_encoder("timm-audio")
def timm_audio(model: str = "vit_base_patch16_224", pretrained: bool = True, sample_rate: int = 16_000,
               n_mels: int = 128, max_seconds: float = 10.24, patch_size: int = 16, checkpoint: str | None = None,
               **kwargs: Any) -> SpectrogramEncoder:
    """AST-style: any timm ViT over `n_mels` log-mel bins; ImageNet weights are summed to one input channel.

    `checkpoint` loads local weights (safetensors or a torch state dict) instead of the hub's.
    """
    if checkpoint is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": checkpoint}
    encoder = _build(model, pretrained or checkpoint is not None, sample_rate, n_mels, max_seconds, patch_size,
                     **kwargs)
    encoder.pretrained = pretrained or checkpoint is not None
    return encoder


@register_encoder("tiny-audio", random_init=True)
def tiny_audio(pretrained: bool = False, width: int = 64, layers: int = 2, heads: int = 2, n_mels: int = 32,
               patch_size: int = 8, max_seconds: float = 1.0, sample_rate: int = 16_000) -> SpectrogramEncoder:
    """A random-init spectrogram ViT (mean-pooled patches, no class token): no download, for tests and the demo."""
    return _build("vit_tiny_patch16_224", False, sample_rate, n_mels, max_seconds, patch_size, embed_dim=width,
                  depth=layers, num_heads=heads, mlp_ratio=2.0, global_pool="avg", class_token=False)
