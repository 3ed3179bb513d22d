from __future__ import annotations

import pytest
import torch

from mmfuse.fusion import ModalityFeatures, create_fusion, list_fusions

MODS = ["audio", "image", "text"]
B, T, D = 4, 5, 8


def features(present: dict[str, list[bool]] | None = None, requires_grad: bool = False):
    out = {}
    for i, m in enumerate(MODS):
        flags = torch.tensor(present[m]) if present else torch.ones(B, dtype=torch.bool)
        out[m] = ModalityFeatures(
            tokens=torch.randn(B, T + i, D, requires_grad=requires_grad),
            mask=torch.ones(B, T + i, dtype=torch.bool),
            pooled=torch.randn(B, D, requires_grad=requires_grad),
            present=flags,
        )
    return out


@pytest.mark.parametrize("name", list_fusions())
def test_shape_and_gradients_reach_every_modality(name):
    fusion = create_fusion(name, MODS, D)
    feats = features(requires_grad=True)
    out = fusion(feats)
    assert out.shape == (B, D)
    out.square().sum().backward()
    for m in MODS:
        grads = [g for g in (feats[m].pooled.grad, feats[m].tokens.grad) if g is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), m


@pytest.mark.parametrize("name", list_fusions())
def test_modality_order_is_irrelevant(name):
    fusion = create_fusion(name, MODS, D).eval()
    feats = features()
    reordered = {m: feats[m] for m in reversed(MODS)}
    torch.testing.assert_close(fusion(feats), fusion(reordered))


@pytest.mark.parametrize("name", list_fusions())
def test_absent_modality_is_ignored_whatever_its_placeholder(name):
    fusion = create_fusion(name, MODS, D).eval()
    present = {"audio": [False, True, False, False], "image": [True] * 4, "text": [True, True, False, False]}
    feats = features(present)
    out = fusion(feats)
    assert torch.isfinite(out).all()
    noisy = dict(feats)
    for m in MODS:
        keep = feats[m].present
        noisy[m] = ModalityFeatures(
            tokens=torch.where(keep[:, None, None], feats[m].tokens, torch.randn_like(feats[m].tokens) * 100),
            mask=feats[m].mask, present=keep,
            pooled=torch.where(keep[:, None], feats[m].pooled, torch.randn(B, D) * 100),
        )
    torch.testing.assert_close(fusion(noisy), out)


@pytest.mark.parametrize("name", list_fusions())
def test_absent_modality_padded_or_left_out_is_the_same(name):
    fusion = create_fusion(name, MODS, D).eval()
    feats = features({"audio": [False] * B, "image": [True] * B, "text": [True, False, True, True]})
    left_out = {m: feats[m] for m in ("image", "text")}
    torch.testing.assert_close(fusion(left_out), fusion(feats))


@pytest.mark.parametrize("name", list_fusions())
def test_padding_tokens_change_nothing(name):
    fusion = create_fusion(name, MODS, D).eval()
    feats = features()
    padded = {}
    for m, f in feats.items():  # 3 extra padding tokens of large random values, masked out
        pad = torch.randn(B, 3, D) * 100
        padded[m] = ModalityFeatures(tokens=torch.cat([f.tokens, pad], 1),
                                     mask=torch.cat([f.mask, torch.zeros(B, 3, dtype=torch.bool)], 1),
                                     pooled=f.pooled, present=f.present)
    torch.testing.assert_close(fusion(padded), fusion(feats))


@pytest.mark.parametrize("name", list_fusions())
def test_single_modality_sample_uses_only_that_modality(name):
    fusion = create_fusion(name, MODS, D).eval()
    feats = features({"audio": [False] * B, "image": [True] * B, "text": [False] * B})
    alone = fusion({"image": feats["image"]})
    other = features({"audio": [False] * B, "image": [True] * B, "text": [False] * B})
    other["image"] = feats["image"]
    torch.testing.assert_close(fusion(other), alone)


@pytest.mark.parametrize("name", list_fusions())
def test_sample_with_nothing_present_is_finite(name):
    fusion = create_fusion(name, MODS, D).eval()
    out = fusion(features({m: [False] * B for m in MODS}))
    assert torch.isfinite(out).all()
