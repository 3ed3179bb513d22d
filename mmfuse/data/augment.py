"""Image augmentation of training samples (`train.augment`), with `torchvision.transforms.v2`, seeded per sample.

Policies:

    light    RandomResizedCrop (scale 0.7-1, aspect 0.9-1.1) back to the tower's size, RandomAffine (up to 10
             degrees, 5% shift), mild ColorJitter (brightness, contrast, saturation 0.2; no hue): the content stays
             readable. No horizontal flip: flips corrupt digits and text.
    trivial  TrivialAugmentWide (Müller & Hutter, 2021): one strong op per image, rotations up to 135 degrees and
             shears included; for natural photos, not for images of text.
    none     nothing.

`ImageAugment` runs in the loader's decode step, per sample, where decoding runs (loader worker processes): between
the image preprocessor's resize to the tower's size and its normalisation, so its cost does not grow with the source
image. Its randomness comes from (train seed, epoch, sample key) alone, never from the global RNG (forked and
restored around each call): a resumed run sees exactly the images an uninterrupted one does, whatever the worker
count, and dropout's random stream is not shifted by decoding.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

POLICIES = ("none", "light", "trivial")
"""What `train.augment` resolves to in a stage (`auto` is decided per stage; `mmfuse.finetune`)."""


def stage_policy(setting: str, image_trains: bool) -> str:
    """The policy a stage's training batches get: `setting` (`train.augment`; auto: light) where the image tower
    trains, none where it is frozen (its cached features are of unaugmented images) or absent."""
    if not image_trains:
        return "none"
    return "light" if setting == "auto" else setting


def build_policy(policy: str, size: tuple[int, int]) -> Any:
    """The `torchvision.transforms.v2` transform of `policy` for (3, H, W) float images in [0, 1] of `size`; areas
    moved in from outside the image are black."""
    from torchvision.transforms import v2

    bilinear = v2.InterpolationMode.BILINEAR  # torchvision's default for the geometric ops is nearest: jagged edges
    if policy == "light":
        return v2.Compose([
            v2.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.9, 1.1), interpolation=bilinear, antialias=True),
            v2.RandomAffine(degrees=10.0, translate=(0.05, 0.05), interpolation=bilinear),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        ])
    if policy == "trivial":
        return v2.TrivialAugmentWide(interpolation=bilinear)
    raise ValueError(f"no augmentation policy '{policy}' (choose from {', '.join(POLICIES[1:])})")


def sample_seed(seed: int, epoch: int, key: str) -> int:
    """A 63-bit seed from (seed, epoch, key); stable across processes (Python's `hash` of a str is not)."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class ImageAugment:
    """One epoch's augmentation of training images: `augment(image, key)`, called by the image preprocessor
    between resizing and normalising (`ImagePreprocessor.transform(value, augment=...)`). Picklable.

    Inputs: image (3, S, S) float in [0, 255]. Returns: (3, S, S) float in [0, 255], the same for the same
    (seed, epoch, key).
    """

    modality = "image"

    def __init__(self, policy: str, seed: int, epoch: int) -> None:
        if policy not in POLICIES[1:]:
            raise ValueError(f"no augmentation policy '{policy}' (choose from {', '.join(POLICIES[1:])})")
        self.policy, self.seed, self.epoch = policy, seed, epoch
        self._transforms: dict[tuple[int, int], Any] = {}  # by image size

    def __call__(self, image: torch.Tensor, key: str) -> torch.Tensor:
        size = (int(image.shape[-2]), int(image.shape[-1]))
        if size not in self._transforms:
            self._transforms[size] = build_policy(self.policy, size)
        with torch.random.fork_rng(devices=[]):  # the CPU generator only; restored on exit
            torch.default_generator.manual_seed(sample_seed(self.seed, self.epoch, key))
            out = self._transforms[size](image / 255.0)  # (3, S, S) in [0, 1]
        return out * 255.0

    def __repr__(self) -> str:
        return f"ImageAugment({self.policy!r}, seed={self.seed}, epoch={self.epoch})"
