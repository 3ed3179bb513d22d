"""Check one manifest row and build its webdataset sample: every media file is read and decoded in full.

`check_row` runs in the shard writer's worker processes; it returns either a sample or the reason it refused the
row as (field, reason). Images are decoded with the encoders' own decoder (`mmfuse.encoders.image_io`, so an
accepted image is one the loader reads), audio with `soundfile` in blocks. Nothing unbounded is read: a media file
over `mmfuse.limits.max_member_bytes()`, an image over `max_image_pixels()` is refused; audio is read up to
`max_audio_seconds()`.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

from ..errors import FieldError
from ..limits import LimitExceeded, max_audio_seconds, max_member_bytes, too_large
from .manifest import ShardConfig

AUDIO_FORMATS = {"wav": "wav", "flac": "flac", "ogg": "ogg", "mp3": "mp3", "aiff": "aiff", "w64": "w64"}
FORMAT_NAMES = {"jpg": "JPEG", "png": "PNG", "webp": "WebP", "gif": "GIF"}
IMAGE_MAGIC = {b"\xff\xd8\xff": "jpg", b"\x89PNG": "png", b"GIF8": "gif"}


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _read_media(config: ShardConfig, column: str, value: Any) -> tuple[bytes, str]:
    path = Path(str(value).strip())
    if not path.is_absolute():
        path = config.media_root / path
    if not path.is_file():
        raise FieldError(column, f"missing file {path}")
    try:
        size = path.stat().st_size
        if size > max_member_bytes():
            raise FieldError(column, f"file {too_large(size)}: {path}")
        return path.read_bytes(), path.suffix.lower().lstrip(".")
    except OSError as err:
        raise FieldError(column, f"unreadable file {path}: {err.strerror}") from None


def _first_line(err: Exception) -> str:
    text = re.sub(r"Error opening <[^>]*>: ", "", str(err))  # soundfile names the BytesIO object, not the file
    text = re.sub(r"^\w+, \S+:\d+, ", "", text)  # torchvision prefixes its C++ source location
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else type(err).__name__)[:120]


def check_image(data: bytes, extension: str, column: str = "image") -> str:
    """Decode `data` fully; return the member extension to store it under, or raise `FieldError`."""
    from ..encoders.image_io import decode_image_bytes

    ext = next((e for magic, e in IMAGE_MAGIC.items() if data.startswith(magic)), None)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        ext = "webp"
    if ext is None:
        raise FieldError(column, f"not a JPEG, PNG, WebP or GIF image (extension .{extension})")
    try:
        image = decode_image_bytes(data)
    except LimitExceeded as err:
        raise FieldError(column, str(err)) from None
    except Exception as err:  # noqa: BLE001 - any decoder failure means the file is corrupt or truncated
        raise FieldError(column, f"unreadable or truncated {FORMAT_NAMES[ext]} image: {_first_line(err)}") from None
    if image.numel() == 0:
        raise FieldError(column, "image has no pixels")
    return ext


# libsndfile's parse log marks a chunk whose declared size the file does not hold: "data : 32000 (should be 15978)"
_SHORT_CHUNK = re.compile(r"^\s*(\w+)\s*: (\d+) \(should be (\d+)\)", re.MULTILINE)


def check_audio(data: bytes, extension: str, column: str = "audio", silent: str = "reject") -> str:
    """Read `data` with soundfile, in blocks, up to `max_audio_seconds()`; return the member extension to store it
    under, or raise `FieldError`.

    FieldError: unreadable files, files cut short (a chunk holds fewer bytes than its header declares), clips with no
    samples, clips with a NaN or Inf sample (float WAV; of those read), and -- unless `silent` is 'keep' -- clips
    whose every sample (of those read) is 0.
    """
    import numpy as np
    import soundfile as sf

    frames, audible, nonfinite = 0, False, 0
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            kind = f.format.lower()
            log = f.extra_info
            limit = int(max_audio_seconds() * f.samplerate)
            for block in f.blocks(blocksize=1 << 16, frames=limit, dtype="float32", always_2d=True):
                frames += len(block)
                audible = audible or bool(block.any())
                nonfinite += block.size - int(np.isfinite(block).sum())
    except Exception as err:  # noqa: BLE001 - libsndfile raises several types for corrupt files
        raise FieldError(column, f"unreadable audio: {_first_line(err)}") from None
    short = next((m for m in _SHORT_CHUNK.finditer(log) if m.group(1).lower() == "data"), None)
    if short is not None:
        raise FieldError(column, f"truncated {kind.upper()} audio: the header declares {short.group(2)} bytes of "
                              f"samples, the file holds {short.group(3)}")
    if frames == 0:
        raise FieldError(column, "audio has no samples")
    if nonfinite:
        raise FieldError(column, f"non-finite audio ({nonfinite} of {frames} samples are NaN or Inf)")
    if silent == "reject" and not audible:
        raise FieldError(column, f"silent audio (all {frames} samples are 0)")
    return AUDIO_FORMATS.get(kind, extension)


def _text(config: ShardConfig, row: dict[str, Any]) -> str | None:
    parts = [row.get(c) for c in config.text]
    if all(p is None for p in parts):
        return None
    text = config.text_join.join(str(p).strip() for p in parts if not _blank(p))
    if not text:
        if config.empty_text == "reject":
            raise FieldError(",".join(config.text), "empty text")
        return None
    return text


def check_row(config: ShardConfig, row: dict[str, Any], key: str, targets: dict[str, str]) -> dict[str, Any]:
    """One manifest row -> a webdataset sample {'__key__', 'txt', '<image ext>', '<audio ext>', **targets}.

    `targets` are the target members already built (`cls` / `tgt`, see `mmfuse.data.targets`). A modality whose
    column is empty or absent is left out (the loader marks it absent). Raises `FieldError`.
    """
    sample: dict[str, Any] = {"__key__": key, **targets}
    if config.text:
        text = _text(config, row)
        if text is not None:
            sample["txt"] = text
    if config.image and not _blank(row.get(config.image)):
        data, ext = _read_media(config, config.image, row[config.image])
        sample[check_image(data, ext, config.image)] = data
    if config.audio and not _blank(row.get(config.audio)):
        data, ext = _read_media(config, config.audio, row[config.audio])
        sample[check_audio(data, ext, config.audio, config.silent_audio)] = data
    if len(sample) == 1 + len(targets):
        raise FieldError("record", "no text, image or audio")
    return sample
