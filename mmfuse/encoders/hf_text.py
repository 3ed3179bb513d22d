"""Text encoders from Hugging Face `transformers` (BERT family), plus the `tiny-text` random-init preset.

Batch entries: `text_ids` (B, T) int64 and `text_mask` (B, T) bool, padded to the longest text in the batch.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from .base import EncoderOutput, Preprocessor, masked_mean, random_init
from .hf_common import HFEncoder
from .registry import register_encoder


class TextPreprocessor(Preprocessor):
    """Tokenises a batch of strings with dynamic padding (to the longest, never to a fixed max)."""

    modality = "text"

    def __init__(self, tokenizer: Any, max_length: int = 128) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def transform(self, value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        if not isinstance(value, str):
            raise TypeError(f"text must be a str, got {type(value).__name__}")
        value = value.strip()
        return value or None

    def collate(self, values: list[str | None]) -> dict[str, torch.Tensor]:
        texts = [v if v is not None else "" for v in values]
        enc = self.tokenizer(texts, padding="longest", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {"text_ids": enc["input_ids"], "text_mask": enc["attention_mask"].bool()}


class HFTextEncoder(HFEncoder):
    """Wraps any `transformers` encoder model (`AutoModel`) and its tokenizer.

    Inputs: batch["text_ids"] (B, T), batch["text_mask"] (B, T).
    Returns: tokens (B, T, D), mask (B, T), pooled (B, D) -- the [CLS] state or the masked mean (`pooling`).
    """

    modality = "text"
    adapter_targets = ("query", "value")  # BERT-family attention projections (LoRA's usual choice)

    def __init__(self, backbone: torch.nn.Module, tokenizer: Any, pooling: str = "cls", max_length: int = 128) -> None:
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ConfigError(f"text encoder pooling must be 'cls' or 'mean', got '{pooling}'")
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None  # BERT's pooler is unused here; drop it so no parameter goes without a gradient
        self.backbone = backbone
        self.pooling = pooling
        self.width = backbone.config.hidden_size
        self.preprocessor = TextPreprocessor(tokenizer, max_length)

    def forward(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        ids, mask = batch["text_ids"], batch["text_mask"]
        tokens = self.backbone(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # (B, T, D)
        pooled = tokens[:, 0] if self.pooling == "cls" else masked_mean(tokens, mask)
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pooled)

    def save_assets(self, directory: str) -> dict[str, Any]:
        self.preprocessor.tokenizer.save_pretrained(directory)
        self.backbone.config.save_pretrained(directory)
        return {"model": directory}


def _offline_hint(model: str, err: Exception) -> ConfigError:
    where = "local directory" if Path(model).exists() else "hub name (no network? pass a local directory)"
    return ConfigError(f"cannot load text model '{model}' as a {where}: {str(err).splitlines()[0]}")


@register_encoder("hf-text")
def hf_text(model: str = "bert-base-uncased", pretrained: bool = True, pooling: str = "cls",
            max_length: int = 128, attn_implementation: str = "sdpa") -> HFTextEncoder:
    """Any BERT-family `AutoModel` by hub name or local directory. `pretrained=False`: architecture only."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
        if pretrained:
            backbone = AutoModel.from_pretrained(model, attn_implementation=attn_implementation)
        else:
            config = AutoConfig.from_pretrained(model)
            backbone = AutoModel.from_config(config, attn_implementation=attn_implementation)
    except (OSError, ValueError) as err:
        raise _offline_hint(model, err) from None
    return HFTextEncoder(backbone, tokenizer, pooling=pooling, max_length=max_length)


def tiny_tokenizer() -> Any:
    """A WordPiece tokenizer over the packaged 667-entry vocabulary (common English words + characters)."""
    from transformers import BertTokenizerFast

    lines = (resources.files("mmfuse") / "assets" / "tiny_vocab.txt").read_text(encoding="utf-8").splitlines()
    return BertTokenizerFast(vocab={token: i for i, token in enumerate(lines)}, do_lower_case=True)


@register_encoder("tiny-text")
def tiny_text(pretrained: bool = False, width: int = 64, layers: int = 2, heads: int = 2, max_length: int = 64,
              pooling: str = "mean", model: str | None = None) -> HFTextEncoder:
    """A random-init BERT of `width` and `layers` with a packaged tokenizer: no download, for tests and the demo.

    `model` (a directory written by `save_assets`) restores a saved tiny encoder's tokenizer and config.
    """
    if model is not None:
        return random_init(hf_text(model=model, pretrained=False, pooling=pooling, max_length=max_length))
    from transformers import BertConfig, BertModel

    tokenizer = tiny_tokenizer()
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=width, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=4 * width, max_position_embeddings=max_length,
                        attn_implementation="sdpa")
    return random_init(HFTextEncoder(BertModel(config, add_pooling_layer=False), tokenizer, pooling=pooling,
                                     max_length=max_length))
