"""The loader's stand-in for a modality whose encoder outputs are cached: no decoding, only presence by key.

`FeatureCache` (mmfuse.train.feature_cache) builds one per cached modality and split. The loader calls
`lookup(key)` instead of the encoder's `transform`, so a cached image is never read as JPEG again; a key the cache
does not hold (its media failed to decode when the cache was built) fails here, and the sample is skipped and counted
under the same reason as without the cache.
"""

from __future__ import annotations

from typing import Any

import torch

from ..encoders.base import Preprocessor


class CachedInput(Preprocessor):
    """Presence of one modality per sample key (True: present, False: absent). Picklable for loader workers."""

    def __init__(self, modality: str, present: dict[str, bool]) -> None:
        self.modality = modality
        self.present = present

    def lookup(self, key: str) -> bool | None:
        """True if the sample has this modality, None if not; a key missing from the cache raises KeyError."""
        if key not in self.present:
            raise KeyError(f"sample '{key}' is not in the {self.modality} feature cache")
        return True if self.present[key] else None

    def transform(self, value: Any) -> Any:
        raise TypeError("CachedInput looks samples up by key (decode_sample calls lookup)")

    def collate(self, values: list[Any]) -> dict[str, torch.Tensor]:
        return {}  # the features are attached by key after the loader (FeatureCache.attach)
