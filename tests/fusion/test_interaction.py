"""The `interact` fusion: its options, its pair terms, and a matching task it learns faster than concat-MLP."""

from __future__ import annotations

import pytest
import torch

from mmfuse.errors import ConfigError
from mmfuse.fusion import ModalityFeatures, create_fusion

D = 16


def pooled_features(vectors: dict[str, torch.Tensor], present: dict[str, torch.Tensor] | None = None) -> dict:
    """`ModalityFeatures` carrying only pooled vectors (B, D) (one masked token each)."""
    out = {}
    for m, v in vectors.items():
        B = v.shape[0]
        out[m] = ModalityFeatures(tokens=torch.zeros(B, 1, v.shape[1]), mask=torch.zeros(B, 1, dtype=torch.bool),
                                  pooled=v, present=torch.ones(B, dtype=torch.bool) if present is None else present[m])
    return out


def matching_task(n: int, generator: torch.Generator, noise: float = 0.7):
    """Pairs (a, b): a is a fresh random "class" vector plus noise; b is another noisy copy of the same class
    vector (label 1, half of them) or of an unrelated one. Every pair has classes of its own, so a model must
    learn to compare, not memorise classes."""
    first = torch.randn(n, D, generator=generator)
    same = torch.rand(n, generator=generator) < 0.5
    second = torch.where(same[:, None], first, torch.randn(n, D, generator=generator))
    a = first + noise * torch.randn(n, D, generator=generator)
    b = second + noise * torch.randn(n, D, generator=generator)
    return {"text": a, "image": b}, same.long()


def train_matcher(fusion_name: str, steps: int, seed: int = 0, **kwargs) -> float:
    """Train fusion + linear head on the matching task for `steps` seeded Adam steps; held-out accuracy."""
    torch.manual_seed(seed)
    fusion = create_fusion(fusion_name, ["image", "text"], D, dropout=0.0, **kwargs)
    head = torch.nn.Linear(D, 2)
    params = list(fusion.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=3e-3)
    data = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        vectors, labels = matching_task(64, data)
        loss = torch.nn.functional.cross_entropy(head(fusion(pooled_features(vectors))), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    vectors, labels = matching_task(1000, torch.Generator().manual_seed(999))
    with torch.no_grad():
        fusion.eval()
        return (head(fusion(pooled_features(vectors))).argmax(-1) == labels).float().mean().item()


def test_interact_learns_matching_faster_than_concat_mlp():
    """Same width, steps, optimizer and data: the product / difference terms make "same class?" nearly linear."""
    interact = train_matcher("interact", steps=50)
    concat = train_matcher("concat-mlp", steps=50)
    assert interact > 0.85, interact
    assert interact > concat + 0.1, (interact, concat)  # concat-MLP still has to learn to multiply


def test_bilinear_term_learns_too():
    assert train_matcher("interact", steps=50, bilinear_rank=4) > 0.85


def test_pair_terms_vanish_when_either_side_is_absent():
    """A pair with an absent side contributes only zeros (and a 0 flag): the output is that of the vectors alone."""
    fusion = create_fusion("interact", ["audio", "image", "text"], D, bilinear_rank=2).eval()
    g = torch.Generator().manual_seed(0)
    vectors = {m: torch.randn(3, D, generator=g) for m in ("audio", "image", "text")}
    present = {"audio": torch.tensor([True, False, True]), "image": torch.tensor([True, True, False]),
               "text": torch.tensor([False, False, False])}
    out = fusion(pooled_features(vectors, present))
    garbage = {m: torch.where(present[m][:, None], v, 1e3 * torch.randn(3, D, generator=g))
               for m, v in vectors.items()}
    torch.testing.assert_close(fusion(pooled_features(garbage, present)), out)
    assert torch.isfinite(out).all()


def test_single_modality_has_no_pairs():
    fusion = create_fusion("interact", ["audio"], D)
    assert fusion.pairs == [] and fusion(pooled_features({"audio": torch.randn(2, D)})).shape == (2, D)


@pytest.mark.parametrize("kwargs, message", [({"bilinear_rank": 0}, "bilinear_rank must be an integer >= 1"),
                                             ({"bilinear_rank": 1.5}, "bilinear_rank must be an integer >= 1"),
                                             ({"rank": 4}, "takes no option 'rank'")])
def test_bad_options_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        create_fusion("interact", ["image", "text"], D, **kwargs)
