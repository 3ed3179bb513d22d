"""Text encoders from Hugging Face `transformers` (BERT family), plus the `tiny-text` random-init preset.

Batch entries: `text_ids` (B, T) int64 and `text_mask` (B, T) bool, padded to the longest text in the batch.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from .base import EncoderOutput, Preprocessor, masked_mean
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
    Returns: tokens (B, T, D), mask (B, T), pooled (B, D) -- the [CLS] state, the masked mean or the masked max
    (`pooling`).
    """

    modality = "text"
    adapter_targets = ("query", "value")  # BERT-family attention projections (LoRA's usual choice)

    def __init__(self, backbone: torch.nn.Module, tokenizer: Any, pooling: str = "cls", max_length: int = 128) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"text encoder pooling must be one of {', '.join(POOLINGS)}, got '{pooling}'")
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None  # BERT's pooler is unused here; drop it so no parameter goes without a gradient
        self.backbone = backbone
        self.pooling = pooling
        self.width = backbone.config.hidden_size
        self.preprocessor = TextPreprocessor(tokenizer, max_length)

    def forward(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        ids, mask = batch["text_ids"], batch["text_mask"]
        tokens = self.backbone(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # (B, T, D)
        if self.pooling == "cls":
            pooled = tokens[:, 0]  # (B, D)
        elif self.pooling == "mean":
            pooled = masked_mean(tokens, mask)
        else:
            pooled = tokens.masked_fill(~mask.unsqueeze(-1), torch.finfo(tokens.dtype).min).amax(1)
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pooled)

    def save_assets(self, directory: str) -> dict[str, Any]:
        """Tokenizer, backbone config and the pooling (as sentence-transformers files, so `pooling=None` reads it
        back)."""
        self.preprocessor.tokenizer.save_pretrained(directory)
        self.backbone.config.save_pretrained(directory)
        write_pooling(Path(directory), self.pooling, self.width)
        return {"model": directory}


POOLINGS = ("cls", "mean", "max")
_ST_MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_max_tokens": "max"}


def _model_file(model: str, name: str) -> Path | None:
    """`name` inside a local model directory, or in the Hugging Face cache for a hub name (never downloads)."""
    if Path(model).is_dir():
        path = Path(model) / name
        return path if path.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, name)
    except Exception:  # noqa: BLE001 (an odd hub name: no cached file)
        return None
    return Path(cached) if isinstance(cached, str) else None


def saved_pooling(model: str) -> str:
    """The pooling a sentence-transformers model declares (`modules.json` -> its Pooling module's
    `config.json`: mean, cls or max), else 'cls'. Raises `ConfigError` for a mode hf-text does not have."""
    modules = _model_file(model, "modules.json")
    if modules is None:
        return "cls"
    try:
        entries = json.loads(modules.read_text(encoding="utf-8"))
        folder = next(e.get("path", "") for e in entries if str(e.get("type", "")).endswith("Pooling"))
    except (StopIteration, ValueError, AttributeError, TypeError):
        return "cls"
    config = _model_file(model, f"{folder}/config.json")
    try:
        modes = json.loads(config.read_text(encoding="utf-8")) if config else {}
    except ValueError:
        raise ConfigError(f"{config}: not valid JSON; pass pooling=cls|mean|max explicitly") from None
    chosen = [mode for key, mode in _ST_MODES.items() if modes.get(key)]
    others = [k for k, v in modes.items() if k.startswith("pooling_mode") and v and k not in _ST_MODES]
    if others or len(chosen) != 1:
        raise ConfigError(f"text model '{model}' declares pooling {others or chosen or 'none'} in {folder}/config.json,"
                          f" which hf-text does not have: pass pooling=cls|mean|max")
    return chosen[0]


def write_pooling(directory: Path, pooling: str, width: int) -> None:
    """Write `pooling` as sentence-transformers' `modules.json` + `1_Pooling/config.json` (what `saved_pooling`
    reads)."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (directory / "modules.json").write_text(json.dumps(modules, indent=2), encoding="utf-8")
    (directory / "1_Pooling").mkdir(exist_ok=True)
    config = {"word_embedding_dimension": width, **{key: mode == pooling for key, mode in _ST_MODES.items()}}
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def _offline_hint(model: str, err: Exception) -> ConfigError:
    where = "local directory" if Path(model).exists() else "hub name (no network? pass a local directory)"
    return ConfigError(f"cannot load text model '{model}' as a {where}: {str(err).splitlines()[0]}")


@register_encoder("hf-text")
def hf_text(model: str = "bert-base-uncased", pretrained: bool = True, pooling: str | None = None,
            max_length: int = 128, attn_implementation: str = "sdpa") -> HFTextEncoder:
    """Any BERT-family `AutoModel` by hub name or local directory. `pretrained=False`: architecture only.

    `pooling` (cls | mean | max) None: what the model's sentence-transformers files declare (`saved_pooling`),
    else cls.
    """
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
    pooling = pooling if pooling is not None else saved_pooling(model)
    return HFTextEncoder(backbone, tokenizer, pooling=pooling, max_length=max_length)


def tiny_tokenizer() -> Any:
    """A WordPiece tokenizer over the packaged 667-entry vocabulary (common English words + characters)."""
    from transformers import BertTokenizerFast

    lines = (resources.files("mmfuse") / "assets" / "tiny_vocab.txt").read_text(encoding="utf-8").splitlines()
    return BertTokenizerFast(vocab={token: i for i, token in enumerate(lines)}, do_lower_case=True)


@register_encoder("tiny-text", random_init=True)
def tiny_text(pretrained: bool = False, width: int = 64, layers: int = 2, heads: int = 2, max_length: int = 64,
              pooling: str = "mean", model: str | None = None) -> HFTextEncoder:
    """A random-init BERT of `width` and `layers` with a packaged tokenizer: no download, for tests and the demo.

    `model` (a directory written by `save_assets`) restores a saved tiny encoder's tokenizer and config.
    """
    if model is not None:
        return hf_text(model=model, pretrained=False, pooling=pooling, max_length=max_length)
    from transformers import BertConfig, BertModel

    tokenizer = tiny_tokenizer()
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=width, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=4 * width, max_position_embeddings=max_length,
                        attn_implementation="sdpa")
    return HFTextEncoder(BertModel(config, add_pooling_layer=False), tokenizer, pooling=pooling,
                         max_length=max_length)
