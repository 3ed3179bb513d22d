"""Image augmentation in the loader (`mmfuse.data.augment`): per sample, seeded by (seed, epoch, key)."""

from __future__ import annotations

import pytest
import torch

from mmfuse.data.augment import ImageAugment, sample_seed, stage_policy
from mmfuse.data.info import DatasetInfo
from mmfuse.data.loader import make_loader


def images(info, preprocessors, augment=None, split="train", **kwargs) -> dict[str, torch.Tensor]:
    """Key -> the image the loader gives it (epoch 1, shuffled; no loader worker unless told)."""
    loader = make_loader(info, split, preprocessors, 16, shuffle=True, seed=0, epoch=1, augment=augment, **kwargs)
    return {k: img for batch in loader for k, img in zip(batch["key"], batch["image"], strict=True)}


@pytest.mark.parametrize("policy", ["light", "trivial"])
def test_augmented_images_differ_per_sample_and_repeat_exactly_per_seed_epoch_key(demo_shards, preprocessors,
                                                                                   policy):
    info = DatasetInfo.load(demo_shards)
    plain = images(info, preprocessors)
    augmented = images(info, preprocessors, {"image": ImageAugment(policy, seed=0, epoch=1)})
    assert plain.keys() == augmented.keys()
    changed = [k for k in plain if not torch.equal(plain[k], augmented[k])]
    assert len(changed) >= 0.8 * len(plain)  # trivial's identity op leaves about 1 in 14 alone
    assert all(augmented[k].shape == (3, 32, 32) and torch.isfinite(augmented[k]).all() for k in plain)
    # the same (seed, epoch, key) gives the same image, however many loader workers decode it
    again = images(info, preprocessors, {"image": ImageAugment(policy, seed=0, epoch=1)}, num_workers=2)
    assert all(torch.equal(augmented[k], again[k]) for k in plain)
    other_epoch = images(info, preprocessors, {"image": ImageAugment(policy, seed=0, epoch=2)})
    assert sum(not torch.equal(augmented[k], other_epoch[k]) for k in plain) >= 0.8 * len(plain)


def test_no_augment_gives_the_plain_images_and_text_is_never_touched(demo_shards, preprocessors):
    info = DatasetInfo.load(demo_shards)
    loader = lambda **kw: list(make_loader(info, "train", preprocessors, 16, shuffle=True, epoch=1, **kw))  # noqa: E731
    plain, none = loader(), loader(augment=None)
    augmented = loader(augment={"image": ImageAugment("light", seed=0, epoch=1)})
    for a, b, c in zip(plain, none, augmented, strict=True):
        assert torch.equal(a["image"], b["image"]) and a["key"] == c["key"]
        assert torch.equal(a["text_ids"], c["text_ids"]) and torch.equal(a["label"], c["label"])


def test_augmenting_leaves_the_global_rng_alone():
    """Dropout draws from the global RNG: decoding in the main process (0 loader workers) must not move it."""
    image = torch.rand(3, 16, 16) * 255
    state = torch.random.get_rng_state()
    out = ImageAugment("trivial", seed=0, epoch=1)(image, "k")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert out.shape == (3, 16, 16) and 0 <= out.min() and out.max() <= 255


def test_stage_policy_and_seeds():
    assert stage_policy("auto", image_trains=True) == "light"
    assert stage_policy("trivial", image_trains=True) == "trivial"
    assert {stage_policy(s, image_trains=False) for s in ("auto", "light", "trivial", "none")} == {"none"}
    assert sample_seed(0, 1, "a") == sample_seed(0, 1, "a") != sample_seed(0, 2, "a") != sample_seed(1, 1, "a")
    with pytest.raises(ValueError, match="no augmentation policy 'none'"):
        ImageAugment("none", seed=0, epoch=1)


def test_a_cached_modality_cannot_be_augmented(demo_shards, preprocessors):
    from mmfuse.data.cached import KeyLookup

    info = DatasetInfo.load(demo_shards)
    with pytest.raises(ValueError, match="feature cache"):
        make_loader(info, "train", preprocessors, 16, lookups={"image": KeyLookup("image", {})},
                    augment={"image": ImageAugment("light", seed=0, epoch=1)})
