"""Resource limits on untrusted input: decoded image pixels, audio seconds read, tar member bytes.

Each limit has a default and an environment variable that overrides it (read on every use, so loader and shard
worker processes see the same value as their parent):

    MMFUSE_MAX_IMAGE_PIXELS   width x height of one image, checked from its header before decoding
    MMFUSE_MAX_AUDIO_SECONDS  seconds of one clip the shard check reads (encoders read only their own max_seconds)
    MMFUSE_MAX_MEMBER_BYTES   bytes of one tar member (and of one media file `mmfuse shard` reads)

A sample over a limit is refused or skipped with a `LimitExceeded` reason, never decoded.
"""

from __future__ import annotations

import os

from .errors import ConfigError

DEFAULTS = {
    "MMFUSE_MAX_IMAGE_PIXELS": 1 << 26,  # 8192 x 8192: every camera photo, not a decompression bomb
    "MMFUSE_MAX_AUDIO_SECONDS": 600,
    "MMFUSE_MAX_MEMBER_BYTES": 256 << 20,
}


class LimitExceeded(ValueError):
    """A value is over a resource limit; the message is the reason, e.g. 'too many pixels (15000x15000 ...)'."""


def _limit(name: str) -> int:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return DEFAULTS[name]
    try:
        value = int(float(text))
    except (ValueError, OverflowError):
        raise ConfigError(f"{name}={text!r}: expected a positive number") from None
    if value < 1:
        raise ConfigError(f"{name}={text!r}: expected a positive number")
    return value


def max_image_pixels() -> int:
    """The most pixels (width x height) one image may declare ($MMFUSE_MAX_IMAGE_PIXELS)."""
    return _limit("MMFUSE_MAX_IMAGE_PIXELS")


def max_audio_seconds() -> float:
    """The most seconds of one clip the shard check reads ($MMFUSE_MAX_AUDIO_SECONDS)."""
    return float(_limit("MMFUSE_MAX_AUDIO_SECONDS"))


def max_member_bytes() -> int:
    """The largest tar member or media file read into memory ($MMFUSE_MAX_MEMBER_BYTES)."""
    return _limit("MMFUSE_MAX_MEMBER_BYTES")


def check_pixels(width: int, height: int) -> None:
    """Raise `LimitExceeded` if a `width` x `height` image is over `max_image_pixels()`."""
    limit = max_image_pixels()
    if width * height > limit:
        raise LimitExceeded(f"too many pixels ({width}x{height} = {width * height}; the limit is {limit}, "
                            f"MMFUSE_MAX_IMAGE_PIXELS)")


def too_large(size: int) -> str:
    """The reason given for a member or file of `size` bytes over `max_member_bytes()`."""
    return f"too large ({size} bytes; the limit is {max_member_bytes()}, MMFUSE_MAX_MEMBER_BYTES)"
