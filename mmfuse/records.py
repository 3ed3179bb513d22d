"""Plain records -> length-sorted batches of indices, so each batch pads its text to a similar length.

A record is a dict with any of `text`, `image`, `audio` (and optionally `key`); `Predictor` decodes them. Sorting
happens inside windows of the input, so an endless iterator streams; the caller restores the input order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any


def text_length(record: Any) -> int:
    """A cheap proxy of a record's token count: the length of its text (0 without text or for a non-dict)."""
    text = record.get("text") if isinstance(record, dict) else None
    return len(text) if isinstance(text, (str, bytes)) else 0


def sorted_batches(records: Iterable[dict[str, Any]], batch_size: int,
                   window: int) -> Iterator[tuple[list[int], list[dict[str, Any]]]]:
    """Yield (input indices, records) batches; within each window of `window` records the longest texts come first.

    Every input index appears exactly once; indices count from 0 over the whole input.
    """
    if batch_size < 1 or window < 1:
        raise ValueError("batch_size and window must be >= 1")
    source = iter(records)
    start = 0
    while True:
        chunk = list(islice(source, window))
        if not chunk:
            return
        order = sorted(range(len(chunk)), key=lambda i: -text_length(chunk[i]))  # stable: ties keep input order
        for b in range(0, len(order), batch_size):
            picked = order[b:b + batch_size]
            yield [start + i for i in picked], [chunk[i] for i in picked]
        start += len(chunk)
