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
            tokens=feats[m].tokens, mask=feats[m].mask, present=keep,
            pooled=torch.where(keep[:, None], feats[m].pooled, torch.randn(B, D) * 100),
        )
    torch.testing.assert_close(fusion(noisy), out)


@pytest.mark.parametrize("name", list_fusions())
def test_sample_with_nothing_present_is_finite(name):
    fusion = create_fusion(name, MODS, D).eval()
    out = fusion(features({m: [False] * B for m in MODS}))
    assert torch.isfinite(out).all()
