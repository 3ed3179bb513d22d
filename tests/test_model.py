"""FusionModel with every fusion on three modalities: gradients reach every encoder, modality dropout, presets."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from mmfuse.data.batch import Collator
from mmfuse.errors import ConfigError
from mmfuse.fusion import list_fusions
from mmfuse.model import ModelConfig
from mmfuse.model_config import default_encoders
from mmfuse.presets import list_presets, load_preset, preset_config
from mmfuse.tasks import create_model_and_task

LABELS = ["a", "b", "c"]


def tiny_config(fusion: str, **extra) -> ModelConfig:
    model = load_preset("tiny_cross_attention")
    model.update(fusion=fusion, fusion_kwargs={}, labels=LABELS, **extra)
    return ModelConfig(**model)


def batch(model, n: int = 4, audio_missing: tuple[int, ...] = (1,)) -> dict:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        image = rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
        audio = rng.normal(0, 0.1, 4000 + 2000 * i).astype(np.float32)
        sample = {"key": str(i), "label": i % 3, "text": "an oak toy" if i % 2 else "a steel piece, painted red",
                  "image": image, "audio": None if i in audio_missing else audio}
        samples.append({k: model.preprocessors()[k].transform(v) if k in model.preprocessors() else v
                        for k, v in sample.items()})
    return Collator(model.preprocessors())(samples)


@pytest.mark.parametrize("fusion", list_fusions())
def test_gradients_reach_every_encoder(fusion):
    model = create_model_and_task(tiny_config(fusion))[0]
    b = batch(model)
    assert b["audio"].ndim == 3 and b["present_audio"].tolist() == [True, False, True, True]
    logits = model(b)
    assert logits.shape == (4, 3) and torch.isfinite(logits).all()
    logits.square().sum().backward()
    for m, encoder in model.encoders.items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters()), m


@pytest.mark.parametrize("fusion", ["cross-attention", "bottleneck", "lmf"])
def test_sample_with_audio_absent_is_the_same_in_any_batch(fusion):
    model = create_model_and_task(tiny_config(fusion))[0].eval()
    together = model.embed(batch(model, 4, audio_missing=(1,)))[1]
    b = batch(model, 4, audio_missing=(0, 1, 2, 3))
    torch.testing.assert_close(model.embed(b)[1], together, atol=1e-5, rtol=1e-4)


def test_token_fusions_get_modality_type_embeddings():
    assert set(create_model_and_task(tiny_config("cross-attention"))[0].type_embeddings) == {"audio", "image", "text"}
    assert not hasattr(create_model_and_task(tiny_config("concat-mlp"))[0], "type_embeddings")


def test_modality_dropout_hides_modalities_in_training_only_never_all():
    model = create_model_and_task(tiny_config("cross-attention", modality_dropout=0.6))[0]
    b = batch(model, 8, audio_missing=())
    model.train()
    present = torch.stack([f.present for f in model.encode(b).values()])  # (M, B)
    assert not present.all() and present.any(0).all()
    model.eval()
    assert all(f.present.all() for f in model.encode(b).values())
    with pytest.raises(ConfigError, match="modality_dropout"):
        tiny_config("gated", modality_dropout=1.0)


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_is_a_valid_model_config(name):
    config = replace(preset_config(name), labels=LABELS)
    assert config.modalities and all(m in config.encoders for m in config.modalities)
    assert config.fusion == load_preset(name)["fusion"]  # the preset's own settings, the defaults for the rest
    if name.startswith("demo_"):  # the demo presets take the default (demo) towers
        assert config.encoders == {m: s for m, s in default_encoders().items() if m in config.encoders}
    if name.startswith("tiny_"):
        model = create_model_and_task(config)[0]
        assert model(batch(model)).shape == (4, 3)


def test_unknown_preset_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown model preset 'tiny_cross'.*did you mean"):
        load_preset("tiny_cross")


def test_encode_has_no_cache_key_path_and_project_takes_given_outputs():
    """The model knows no feature cache: entries named like the old cache keys are ignored; encoder outputs computed
    elsewhere go through `project` (what the ONNX export uses) and give exactly `encode`'s features."""
    model = create_model_and_task(tiny_config("cross-attention"))[0].eval()
    b = batch(model)
    fused = model.embed(b)
    w = model.encoders["text"].width
    bogus = {"cached_text_pooled": torch.full((4, w), 9.0), "cached_text_tokens": torch.full((4, 2, w), 9.0),
             "cached_text_mask": torch.ones(4, 2, dtype=torch.bool)}
    torch.testing.assert_close(model.embed({**b, **bogus}), fused, rtol=0, atol=0)
    outputs = {m: model.encoders[m](b) for m in model.modalities}
    given, encoded = model.project(outputs, b), model.encode(b)
    for m in model.modalities:
        assert torch.equal(given[m].pooled, encoded[m].pooled) and torch.equal(given[m].tokens, encoded[m].tokens)
    torch.testing.assert_close(model.fusion(given), fused, rtol=0, atol=0)
