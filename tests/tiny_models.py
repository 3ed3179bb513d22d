"""Tiny random-init configs of the outside model families (HF AST / wav2vec 2.0 / Whisper / ViT, open_clip),
written to a directory as a user's local model would be. Nothing downloads."""

from __future__ import annotations

import json
from pathlib import Path


def hf_audio_dir(kind: str, root: Path) -> str:
    from transformers import (
        ASTConfig,
        ASTFeatureExtractor,
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        WhisperConfig,
        WhisperFeatureExtractor,
    )

    if kind == "ast":
        config = ASTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                           max_length=64, num_mel_bins=16, patch_size=16, frequency_stride=16, time_stride=16)
        extractor = ASTFeatureExtractor(num_mel_bins=16, max_length=64)
    elif kind == "wav2vec2":
        config = Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                                num_conv_pos_embedding_groups=2, feat_extract_norm="layer")
        extractor = Wav2Vec2FeatureExtractor(return_attention_mask=True)
    elif kind == "whisper":
        config = WhisperConfig(d_model=16, encoder_layers=1, encoder_attention_heads=2, decoder_layers=1,
                               decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=16,
                               max_source_positions=50, vocab_size=100, max_target_positions=16, pad_token_id=0,
                               bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
        extractor = WhisperFeatureExtractor(feature_size=16, chunk_length=1)  # 1 s = 100 frames = 2 x 50 positions
    else:
        raise ValueError(kind)
    path = root / kind
    config.save_pretrained(path)
    extractor.save_pretrained(path)
    return str(path)


def hf_vit_dir(root: Path) -> str:
    from transformers import ViTConfig, ViTImageProcessor

    path = root / "vit"
    ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32,
              patch_size=8).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


def open_clip_config(root: Path) -> str:
    """An open_clip model-config JSON of a width-16, one-layer CLIP (the real BPE vocabulary)."""
    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 16, "patch_size": 8, "head_width": 8},
              "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    path = root / "tiny-clip.json"
    path.write_text(json.dumps(config))
    return str(path)
