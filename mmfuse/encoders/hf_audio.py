"""Audio encoders from Hugging Face `transformers`: AST (`ASTModel`), wav2vec 2.0 family (`Wav2Vec2Model`, HuBERT,
WavLM: any model that maps raw samples to frames) and Whisper's encoder, by hub name or local directory.

The model's own feature extractor runs per clip inside the preprocessor (AST: Kaldi fbank padded to its fixed
length; Whisper: log-mel padded to its 30 s window (or the config's); wav2vec 2.0: normalised raw samples, padded
to the batch's longest clip). Batch entries: `audio` (B, F, ...) and `audio_mask` (B, F) (see `audio_io.py`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from .audio_io import AudioPreprocessor
from .base import EncoderOutput, masked_mean
from .hf_common import HFEncoder
from .registry import register_encoder

AST, WHISPER, WAVEFORM = "audio-spectrogram-transformer", "whisper", "waveform"


class FeatureExtractorFrames:
    """Picklable per-clip call of a HF feature extractor: wave (N,) -> frames (F, ...)."""

    def __init__(self, extractor: Any, kind: str) -> None:
        self.extractor, self.kind = extractor, kind

    def __call__(self, wave: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, int]:
        rate = self.extractor.sampling_rate
        if self.kind == AST:  # (max_length, n_mels), padded by the extractor; 10 ms frames
            feats = self.extractor(wave.numpy(), sampling_rate=rate, return_tensors="pt")["input_values"][0]
            return feats, math.ceil(wave.numel() * 100 / rate)
        if self.kind == WHISPER:  # (frames, n_mels), padded to the chunk with the extractor's silence
            feats = self.extractor(wave.numpy(), sampling_rate=rate, return_tensors="pt")["input_features"][0]
            return feats.T, math.ceil(wave.numel() / self.extractor.hop_length)
        return self.extractor(wave.numpy(), sampling_rate=rate, return_tensors="pt")["input_values"][0]  # (N,)


class HFAudioEncoder(HFEncoder):
    """Wraps an AST, Whisper-encoder or wav2vec 2.0-style `transformers` model.

    Inputs: batch["audio"] (B, F, M) fbank / log-mel frames, or (B, N) samples; batch["audio_mask"] (B, F).
    Returns: tokens (B, T, D); mask (B, T) (AST: all True, its patches overlap in time; Whisper: the tokens of the
    clip before its padding; wav2vec 2.0: from the conv stack's output lengths); pooled (B, D) masked mean.
    """

    modality = "audio"

    def __init__(self, backbone: torch.nn.Module, config: Any, extractor: Any, kind: str,
                 max_seconds: float | None = None) -> None:
        super().__init__()
        self.backbone, self.config, self.kind = backbone, config, kind
        self.width = config.hidden_size if kind != WHISPER else config.d_model
        rate = extractor.sampling_rate
        if kind == AST:
            pad_to, seconds = config.max_length, config.max_length * 0.01
        elif kind == WHISPER:
            pad_to, seconds = 2 * config.max_source_positions, extractor.chunk_length
        else:
            pad_to, seconds = None, 10.0
        self.preprocessor = AudioPreprocessor(rate, max_seconds or seconds, FeatureExtractorFrames(extractor, kind),
                                              pad_to=pad_to, min_frames=400 if kind == WAVEFORM else 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        audio, frame_mask = batch["audio"], batch["audio_mask"]
        B = audio.shape[0]
        if self.kind == AST:
            tokens = self.backbone(input_values=audio).last_hidden_state  # (B, T, D)
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        elif self.kind == WHISPER:
            tokens = self.backbone(input_features=audio.transpose(1, 2)).last_hidden_state  # (B, frames / 2, D)
            real = (frame_mask.sum(1) + 1) // 2  # (B,) the conv stack halves the frame rate
            mask = torch.arange(tokens.shape[1], device=tokens.device)[None] < real[:, None]
        else:
            wants_mask = getattr(self.config, "feat_extract_norm", "layer") == "layer"
            tokens = self.backbone(input_values=audio,
                                   attention_mask=frame_mask.long() if wants_mask else None).last_hidden_state
            lengths = self.backbone._get_feat_extract_output_lengths(frame_mask.sum(1))
            mask = torch.arange(tokens.shape[1], device=tokens.device)[None] < lengths[:, None]
        pooled = masked_mean(tokens, mask)  # (B, D)
        return EncoderOutput(tokens=tokens, mask=mask.reshape(B, -1), pooled=pooled)

    def save_assets(self, directory: str) -> dict[str, Any]:
        self.preprocessor.features.extractor.save_pretrained(directory)
        self.config.save_pretrained(directory)
        return {"model": directory}


@register_encoder("hf-audio")
def hf_audio(model: str = "MIT/ast-finetuned-audioset-10-10-0.4593", pretrained: bool = True,
             max_seconds: float | None = None, attn_implementation: str = "sdpa") -> HFAudioEncoder:
    """An AST, Whisper (encoder only) or wav2vec 2.0 / HuBERT / WavLM model by hub name or local directory.

    `pretrained=False` builds the architecture from the config only. `max_seconds` crops clips (default: the
    model's window -- AST's max_length frames, Whisper's chunk -- or 10 s for wav2vec 2.0).
    """
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

    try:
        config = AutoConfig.from_pretrained(model)
        extractor = AutoFeatureExtractor.from_pretrained(model)
        kind = config.model_type if config.model_type in (AST, WHISPER) else WAVEFORM
        if kind == WAVEFORM and not hasattr(AutoModel._model_mapping.get(type(config), object),
                                            "_get_feat_extract_output_lengths"):
            raise ConfigError(f"hf-audio supports AST, Whisper and wav2vec 2.0-style models, not "
                              f"'{config.model_type}' ({model})")
        kwargs = {"attn_implementation": attn_implementation}
        backbone = AutoModel.from_pretrained(model, **kwargs) if pretrained else AutoModel.from_config(config, **kwargs)
    except (OSError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        where = "local directory" if Path(model).exists() else "hub name (no network? pass a local directory)"
        raise ConfigError(f"cannot load audio model '{model}' as a {where}: {str(err).splitlines()[0]}") from None
    if kind == WHISPER:
        backbone = backbone.get_encoder()
    if kind == AST:  # the model takes exactly max_length frames; make the extractor agree
        extractor.max_length = config.max_length
    return HFAudioEncoder(backbone, config, extractor, kind, max_seconds)
