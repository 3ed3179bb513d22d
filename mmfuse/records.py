"""Plain records in, embedding batches out: windows of the input, and an order that puts similar text lengths in
the same batch (each batch pads its text to its own longest, so sorted batches pad little).

Sorting happens inside windows of the input, so an endless iterator streams; the caller restores the input order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any, TypeVar

T = TypeVar("T")


def windows(items: Iterable[T], size: int) -> Iterator[tuple[int, list[T]]]:
    """Yield (index of the first item, up to `size` items) over `items`."""
    if size < 1:
        raise ValueError(f"window size must be >= 1, got {size}")
    source, start = iter(items), 0
    while chunk := list(islice(source, size)):
        yield start, chunk
        start += len(chunk)


def length_order(samples: list[dict[str, Any]]) -> list[int]:
    """Indices of prepared samples, longest text first (a sample without text counts 0); ties keep input order."""
    return sorted(range(len(samples)), key=lambda i: -len(samples[i].get("text") or ""))


def error_reason(err: Exception) -> str:
    """A one-line reason from a decoder's exception, without C++ source locations or stream object names."""
    text = re.sub(r"Error opening <[^>]*>: ", "", str(err))  # soundfile names the BytesIO object, not the file
    text = re.sub(r"^\w+, \S+:\d+, ", "", text)  # torchvision prefixes its C++ source location
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1][:120]}" if lines else type(err).__name__
