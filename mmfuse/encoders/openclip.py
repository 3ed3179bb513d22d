"""open_clip towers: `open-clip-text` and `open-clip-image`, any open_clip model name (`open_clip.list_models()`),
`hf-hub:` / `local-dir:` name, or a path to an open_clip model-config JSON, with a pretrained tag or a local
checkpoint file. The tokenizer and the image preprocessing settings come from open_clip.

Batch entries: `text_ids` / `text_mask` (B, T) (open_clip's BPE, trimmed to the longest text of the batch: the
causal text transformer makes that exact) and `image` (B, 3, S, S).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import Encoder, EncoderOutput, Preprocessor
from .hf_text import TextPreprocessor
from .registry import register_encoder
from .timm_image import ImagePreprocessor


def create_clip(model: str, pretrained_tag: str | None, checkpoint: str | None, pretrained: bool) -> tuple[Any, str]:
    """Build an open_clip model; returns it and the name open_clip knows its config by. Weights load only when
    `pretrained` (from `checkpoint` if given, else the `pretrained_tag`)."""
    import open_clip

    name = model
    if model.endswith(".json"):  # a model-config file: custom or tiny architectures
        if not Path(model).is_file():
            raise ConfigError(f"open_clip model config {model} does not exist")
        open_clip.add_model_config(model)
        name = Path(model).stem
    elif not model.startswith(("hf-hub:", "local-dir:")) and model not in open_clip.list_models():
        raise ConfigError(f"unknown open_clip model '{model}' (see open_clip.list_models())")
    weights = (checkpoint or pretrained_tag) if pretrained else None
    try:
        clip = open_clip.create_model(name, pretrained=weights, load_weights=pretrained, pretrained_text=False)
    except (OSError, RuntimeError, ValueError) as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"cannot load open_clip weights '{weights}' for '{model}' (no network? pass "
                          f"checkpoint=PATH or local-dir:DIR, or pretrained=False): {first}") from None
    return clip, name


def _save_config(name: str, directory: str) -> dict[str, Any]:
    import open_clip

    config = open_clip.get_model_config(name)
    if config is None:  # hf-hub / local-dir models: rebuilt from their own name
        return {}
    path = Path(directory) / f"{name.replace('/', '_')}.json"
    path.write_text(json.dumps(config, indent=2))
    return {"model": str(path)}


class OpenCLIPTextPreprocessor(TextPreprocessor):
    """open_clip's tokenizer; pads to the longest text of the batch (up to the context length)."""

    def collate(self, values: list[str | None]) -> dict[str, torch.Tensor]:
        ids = self.tokenizer([v if v is not None else "" for v in values])  # (B, context_length)
        lengths = (ids == self.tokenizer.eot_token_id).int().argmax(1) + 1  # (B,) up to and including EOT
        T = int(lengths.max())
        mask = torch.arange(T)[None] < lengths[:, None]
        return {"text_ids": ids[:, :T].masked_fill(~mask, 0), "text_mask": mask}


class OpenCLIPTextEncoder(Encoder):
    """A CLIP text transformer (causal, EOT pooling) with its projection applied to every token.

    Inputs: batch["text_ids"] (B, T), batch["text_mask"] (B, T). Returns: tokens (B, T, E), mask (B, T),
    pooled (B, E) = the CLIP text embedding (E = the model's embed_dim).
    """

    modality = "text"

    def __init__(self, clip: Any, name: str) -> None:
        super().__init__()
        import open_clip

        tower = getattr(clip, "text", clip)  # CustomTextCLIP keeps its tower in `.text`
        if not hasattr(tower, "token_embedding") or getattr(tower, "cls_emb", None) is not None:
            raise ConfigError(f"open-clip-text supports CLIP-style text transformers, not {type(tower).__name__} "
                              "(for HF text towers use hf-text)")
        self.name = name
        self.token_embedding, self.transformer = tower.token_embedding, tower.transformer
        self.positional_embedding, self.ln_final = tower.positional_embedding, tower.ln_final
        self.text_projection = tower.text_projection
        self.register_buffer("attn_mask", tower.attn_mask, persistent=False)
        self.pool_type = getattr(tower, "text_pool_type", getattr(tower, "pool_type", "argmax"))
        self.eos_id = getattr(tower, "text_eos_id", getattr(tower, "eos_id", None))
        proj = self.text_projection
        if proj is None:
            self.width = self.ln_final.normalized_shape[0]
        else:
            self.width = proj.out_features if isinstance(proj, torch.nn.Linear) else proj.shape[1]
        tokenizer = open_clip.get_tokenizer(name)
        self.preprocessor = OpenCLIPTextPreprocessor(tokenizer, tokenizer.context_length)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        if self.text_projection is None:
            return x
        proj = self.text_projection
        return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj

    def forward(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        from open_clip.transformer import text_global_pool

        ids, mask = batch["text_ids"], batch["text_mask"]
        T = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:T]  # (B, T, W)
        causal = self.attn_mask[:T, :T] if self.attn_mask is not None else None
        x = self.ln_final(self.transformer(x, attn_mask=causal))
        pooled = text_global_pool(x, ids, self.pool_type, eos_token_id=self.eos_id)  # (B, W)
        return EncoderOutput(tokens=self._project(x), mask=mask, pooled=self._project(pooled))

    def lock(self, unlocked_layers: int = 0) -> None:
        super().lock()
        if unlocked_layers:
            for block in list(self.transformer.resblocks)[-unlocked_layers:]:
                block.requires_grad_(True)
            self.ln_final.requires_grad_(True)
            if self.text_projection is not None:
                self.text_projection.requires_grad_(True)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def save_assets(self, directory: str) -> dict[str, Any]:
        return _save_config(self.name, directory)


class OpenCLIPImagePreprocessor(ImagePreprocessor):
    """open_clip's image transform: resize the shortest side to `size`, centre crop, normalise."""

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) float in [0, 255] -> (3, S, S): shortest side to S (bicubic, antialiased), centre crop."""
        h, w = image.shape[-2:]
        scale = self.size / min(h, w)
        if (h, w) != (self.size, self.size):
            new = (max(self.size, round(h * scale)), max(self.size, round(w * scale)))
            image = F.interpolate(image[None], size=new, mode="bicubic", antialias=True, align_corners=False)[0]
            top, left = (new[0] - self.size) // 2, (new[1] - self.size) // 2
            image = image[:, top: top + self.size, left: left + self.size].clamp(0, 255)
        return image


class OpenCLIPImageEncoder(Encoder):
    """A CLIP image tower with its projection applied to every patch token.

    Inputs: batch["image"] (B, 3, S, S). Returns: tokens (B, T, E) (ViT patch tokens; one token, the embedding,
    for towers that expose none), mask (B, T) all True, pooled (B, E) = the CLIP image embedding.
    """

    modality = "image"

    def __init__(self, clip: Any, name: str) -> None:
        super().__init__()
        import open_clip

        self.name, self.visual = name, clip.visual
        self.width = clip.visual.output_dim
        cfg = open_clip.get_model_preprocess_cfg(clip)
        size = cfg.get("size", 224)
        self.preprocessor: Preprocessor = OpenCLIPImagePreprocessor(
            size if isinstance(size, int) else size[0], tuple(cfg["mean"]), tuple(cfg["std"]))
        if hasattr(self.visual, "output_tokens"):
            self.visual.output_tokens = True

    def forward(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        out = self.visual(batch["image"])
        if isinstance(out, tuple):
            pooled, tokens = out  # (B, E), (B, T, W)
            proj = getattr(self.visual, "proj", None)
            if proj is not None:
                tokens = tokens @ proj  # (B, T, E)
        else:
            pooled, tokens = out, out[:, None]
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pooled)

    def lock(self, unlocked_layers: int = 0) -> None:
        super().lock()
        if unlocked_layers:
            self.visual.requires_grad_(True)
            self.visual.lock(unlocked_groups=unlocked_layers)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)

    def save_assets(self, directory: str) -> dict[str, Any]:
        return _save_config(self.name, directory)


@register_encoder("open-clip-text")
def open_clip_text(model: str = "ViT-B-32", pretrained: bool = True, pretrained_tag: str | None = "openai",
                   checkpoint: str | None = None) -> OpenCLIPTextEncoder:
    """The text tower of an open_clip model; `checkpoint` (a local .pt / .safetensors) overrides the tag."""
    clip, name = create_clip(model, pretrained_tag, checkpoint, pretrained)
    return OpenCLIPTextEncoder(clip, name)


@register_encoder("open-clip-image")
def open_clip_image(model: str = "ViT-B-32", pretrained: bool = True, pretrained_tag: str | None = "openai",
                    checkpoint: str | None = None) -> OpenCLIPImageEncoder:
    """The image tower of an open_clip model; `checkpoint` (a local .pt / .safetensors) overrides the tag."""
    clip, name = create_clip(model, pretrained_tag, checkpoint, pretrained)
    return OpenCLIPImageEncoder(clip, name)
