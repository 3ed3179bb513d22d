"""Encoders: one file per backend family, each registered by name. See `base.py` for the protocol."""

from . import hf_audio, hf_image, hf_text, openclip, packaged, small_audio, spectrogram, timm_image  # noqa: F401
from .base import Encoder, EncoderOutput, Preprocessor, masked_mean
from .registry import create_encoder, list_encoders, register_encoder

__all__ = ["Encoder", "EncoderOutput", "Preprocessor", "create_encoder", "list_encoders", "masked_mean",
           "register_encoder"]
