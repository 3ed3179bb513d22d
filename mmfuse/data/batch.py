"""The batch: a plain `dict` that every stage after the loader reads. This is its one documented layout.

    key             list[str]          sample keys, in batch order
    split           str                the split the loader read (absent from batches built elsewhere, e.g. by
                                       `Predictor`): with `key`, what a cached tower's features are found by
    label           (B,) int64         class index into the dataset's label vocabulary (classification), or
                    (B, C) float       multi-hot label set (multilabel); see `mmfuse.data.targets`
    target          (B, T) float       regression targets, in the dataset's `targets` order
    users           (B, L) int64       interactions: indices into the dataset's `users` of the users that
                                       interacted with each item, padded with -1
    text_ids        (B, T) int64       token ids, padded to the longest text in the batch
    text_mask       (B, T) bool        True for real tokens
    image           (B, 3, S, S) float resized and normalised by the image encoder's preprocessor (in training
                                       batches, augmented in between: `train.augment`, `mmfuse.data.augment`)
    audio           (B, F, ...) float  per-frame audio features from the audio encoder's preprocessor, padded to the
                                       longest clip: (B, F, n_mels) log-mel / fbank frames (tiny-audio, timm-audio,
                                       logmel-stats, small-cnn-audio, hf-audio AST and Whisper, whose F is fixed), or
                                       (B, N) raw samples (wav2vec 2.0)
    audio_mask      (B, F) bool        True for real frames (all False for an absent clip)
    present_<m>     (B,) bool          False where the sample has no input of modality m (placeholder values)
    skipped         dict[str, int]     samples dropped since the previous batch, counted per reason; a reason
                                       'shard: ...' counts unreadable shard data (once per damaged shard)
    ignored         dict[str, int]     shard members ignored since the previous batch (pickle members), per kind
    cursor          (int, int)         (loader worker, running raw-sample count) of the batch's last sample:
                                       the data position a resumable checkpoint stores

Modalities a model does not use are not decoded and have no entries. A modality whose encoder outputs are cached
(a frozen tower under `train.cache_frozen`; `KeyLookup` in the loader) is not decoded either: it has only
`present_<m>`, and the model's `CachedEncoder` for it returns the cached outputs of (`split`, `key`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ..encoders.base import Preprocessor
from .targets import collate_targets


class Collator:
    """Join decoded samples into a batch; each modality is collated by its encoder's preprocessor, except those
    `looked_up` by key (`KeyLookup`), which get only `present_<m>`. `split` (if given) is put in every batch."""

    def __init__(self, preprocessors: Mapping[str, Preprocessor], looked_up: Iterable[str] = (),
                 split: str | None = None) -> None:
        self.preprocessors = dict(preprocessors)
        self.looked_up = frozenset(looked_up)
        self.split = split

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        skipped: Counter[str] = Counter()
        ignored: Counter[str] = Counter()
        real = []
        for sample in samples:
            skipped.update(sample.get("_skipped", {}))
            ignored.update(sample.get("_ignored", {}))
            if not sample.get("_empty"):
                real.append(sample)
        batch: dict[str, Any] = {"key": [s["key"] for s in real], "skipped": dict(skipped), "ignored": dict(ignored)}
        if self.split is not None:
            batch["split"] = self.split
        cursors = [s["_cursor"] for s in real if "_cursor" in s]
        if cursors:
            batch["cursor"] = max(cursors, key=lambda c: c[1])
        if not real:
            return batch
        batch.update(collate_targets(real))
        for m, pre in self.preprocessors.items():
            values = [s.get(m) for s in real]
            if m not in self.looked_up:
                batch.update(pre.collate(values))
            batch[f"present_{m}"] = torch.tensor([v is not None for v in values], dtype=torch.bool)
        return batch


def batch_size(batch: Mapping[str, Any]) -> int:
    return len(batch["key"])


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of `batch` to `device` (non-blocking from pinned memory)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
