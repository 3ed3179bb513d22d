"""Image input shared by every image encoder and the shard check: decoding untrusted bytes safely.

Every image's size is read from its header before any pixel is decoded (JPEG's frame header directly, other formats
through PIL's `Image.open`): an image over `mmfuse.limits.max_image_pixels()` is refused there. JPEG is then
decoded by `torchvision.io` (libjpeg-turbo, the fastest decoder here; it raises on corrupt data), every other format
by PIL: libpng under `torchvision.io` kills the process with SIGSEGV on some corrupt PNGs (a flipped byte in the
compressed data), PIL's decoders raise. A bad image raises (`LimitExceeded` or a decoder error), never crashes.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..limits import LimitExceeded, check_pixels, max_image_pixels, max_member_bytes, too_large

# torchvision 0.29 deprecates its decoders in favour of torchcodec, which is not installable everywhere; its JPEG
# decoder is still the fastest here, so keep it and silence the per-call warning.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


def read_media_file(path: str | Path) -> bytes:
    """The bytes of a media file; raises `LimitExceeded` before reading one over `max_member_bytes()`."""
    size = Path(path).stat().st_size
    if size > max_member_bytes():
        raise LimitExceeded(f"file {too_large(size)}: {path}")
    return Path(path).read_bytes()


FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
"""What PIL may open: the formats `mmfuse shard` accepts. Never every plugin PIL has (EPS would run Ghostscript)."""

# Start-of-frame markers (baseline, progressive, lossless ...); C4, C8 and CC are other segments.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's first start-of-frame segment, None if it has none before the scan.

    A direct walk over the marker segments: PIL's `Image.open` parses every table in Python, a quarter of the
    loader's time per sample on small JPEGs (benchmarks/README.md, "Safe decoding").
    """
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _SOF:
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        elif marker == 0xDA:  # start of scan: no frame header came first
            return None
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def decode_image_bytes(data: bytes | bytearray | memoryview) -> torch.Tensor:
    """Encoded image bytes (JPEG, PNG, WebP or GIF) -> (3, H, W) uint8, RGB.

    Raises `LimitExceeded` for too many pixels, `PIL.UnidentifiedImageError` / `OSError` / `RuntimeError` for data
    that is not a readable image.
    """
    data = bytes(data)
    size = jpeg_size(data) if data[:3] == b"\xff\xd8\xff" else None
    if size is not None:
        check_pixels(*size)
        return _decode_jpeg(data)
    from PIL import Image

    try:
        opened = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except Image.DecompressionBombError as err:  # past PIL's own cap (2 x Image.MAX_IMAGE_PIXELS)
        declared = re.search(r"\((\d+) pixels\)", str(err))
        raise LimitExceeded(f"too many pixels ({declared.group(1) if declared else 'more than PIL allows'}; the limit "
                            f"is {max_image_pixels()}, MMFUSE_MAX_IMAGE_PIXELS)") from None
    with opened as image:
        check_pixels(*image.size)
        if image.format == "JPEG":
            return _decode_jpeg(data)
        image.load()
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)  # (3, H, W)


def _decode_jpeg(data: bytes) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def decode_image(value: Any) -> torch.Tensor:
    """Bytes, a file path, a PIL image, an (H, W, 3) uint8 array or a (3, H, W) uint8 tensor -> (3, H, W) uint8."""
    if isinstance(value, (str, Path)):
        return decode_image_bytes(read_media_file(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return decode_image_bytes(value)
    if isinstance(value, torch.Tensor):
        if value.dtype != torch.uint8 or value.ndim != 3 or value.shape[0] != 3:
            raise TypeError(f"an image tensor must be (3, H, W) uint8, got {tuple(value.shape)} {value.dtype}")
        return value
    if hasattr(value, "convert") and hasattr(value, "size"):  # PIL image
        value = np.asarray(value.convert("RGB"))
    if isinstance(value, np.ndarray):
        if value.ndim == 2:
            value = np.repeat(value[..., None], 3, axis=-1)
        if value.ndim != 3 or value.shape[-1] != 3:
            raise TypeError(f"an image array must be (H, W, 3), got {value.shape}")
        return torch.from_numpy(np.array(value, dtype=np.uint8, copy=True)).permute(2, 0, 1)
    raise TypeError(f"cannot read an image from {type(value).__name__}")
