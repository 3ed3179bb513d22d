from __future__ import annotations

import numpy as np
import pytest
import torch

from mmfuse.encoders import EncoderOutput, create_encoder, list_encoders
from mmfuse.errors import ConfigError, RegistryError


def build_offline(name: str, tmp_path) -> torch.nn.Module:
    """Every registered encoder, built small and without a download."""
    if name == "hf-text":  # a local directory, as a user would pass one
        tiny = create_encoder("tiny-text", width=16, layers=1)
        tiny.save_assets(str(tmp_path / "bert"))
        return create_encoder("hf-text", model=str(tmp_path / "bert"), pretrained=False)
    if name == "timm-image":
        return create_encoder("timm-image:vit_tiny_patch16_224", pretrained=False, image_size=32, patch_size=8,
                              embed_dim=16, depth=1, num_heads=2)
    return create_encoder(name, width=16, layers=1)


def raw_inputs(modality: str, n: int) -> list:
    rng = np.random.default_rng(0)
    if modality == "text":
        return ["a wooden toy", "this is a much longer description of a steel ornament, painted red", None][:n]
    return [rng.integers(0, 255, size=(40, 48, 3), dtype=np.uint8) for _ in range(n - 1)] + [None]


@pytest.mark.parametrize("name", list_encoders())
def test_encoder_protocol(name, tmp_path):
    encoder = build_offline(name, tmp_path)
    pre = encoder.preprocessor
    batch = pre.collate([pre.transform(v) for v in raw_inputs(encoder.modality, 3)])
    out = encoder(batch)
    assert isinstance(out, EncoderOutput)
    B, T, D = out.tokens.shape
    assert (B, D) == (3, encoder.width)
    assert out.mask.shape == (B, T) and out.mask.dtype == torch.bool
    assert out.pooled.shape == (B, D)
    assert torch.isfinite(out.pooled).all()
    out.pooled.sum().backward()
    assert any(p.grad is not None for p in encoder.parameters())


@pytest.mark.parametrize("name", list_encoders())
def test_lock_freezes_parameters(name, tmp_path):
    encoder = build_offline(name, tmp_path)
    encoder.lock()
    assert not any(p.requires_grad for p in encoder.parameters())


def test_text_is_padded_to_longest_not_max_length():
    enc = create_encoder("tiny-text", max_length=64)
    batch = enc.preprocessor.collate(["wood", "metal item"])
    assert batch["text_ids"].shape == (2, 4)  # [CLS] metal item [SEP]
    assert batch["text_mask"].tolist() == [[True, True, True, False], [True, True, True, True]]


def test_text_mean_pooling_ignores_padding():
    enc = create_encoder("tiny-text", width=16, layers=1).eval()
    alone = enc(enc.preprocessor.collate(["oak"])).pooled
    padded = enc(enc.preprocessor.collate(["oak", "a much longer text about a steel item"])).pooled[:1]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-4)


def test_tiny_tokenizer_knows_demo_words():
    tok = create_encoder("tiny-text").preprocessor.tokenizer
    assert tok.tokenize("Steel walnut item") == ["steel", "walnut", "item"]
    assert "[UNK]" not in tok.tokenize("zyxq")  # falls back to characters


def test_image_preprocessor_accepts_bytes_arrays_and_resizes(tmp_path):
    from PIL import Image

    enc = create_encoder("tiny-image", image_size=32)
    arr = np.full((50, 70, 3), 200, dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "x.png")
    from_path = enc.preprocessor.transform(str(tmp_path / "x.png"))
    from_bytes = enc.preprocessor.transform((tmp_path / "x.png").read_bytes())
    from_array = enc.preprocessor.transform(arr)
    from_pil = enc.preprocessor.transform(Image.fromarray(arr))
    for t in (from_bytes, from_array, from_pil):
        torch.testing.assert_close(t, from_path)
    assert from_path.shape == (3, 32, 32)


def test_unknown_encoder_names_the_closest():
    with pytest.raises(RegistryError, match="unknown encoder 'tiny-txt'.*did you mean 'tiny-text'"):
        create_encoder("tiny-txt")


def test_unknown_timm_model_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown timm model 'vit_nonexistent'"):
        create_encoder("timm-image:vit_nonexistent", pretrained=False)


def test_missing_text_model_dir_is_a_one_line_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot load text model") as info:
        create_encoder("hf-text", model=str(tmp_path / "nope"))
    assert "\n" not in str(info.value)
