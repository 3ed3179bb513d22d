"""Small helpers shared by test modules (imported as `from helpers import ...`)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def write_tar(path: str | Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    """A tar shard of `(key, {extension: bytes})` samples, written member by member like any other tool would."""
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def keys(loader) -> list[str]:
    """Every sample key a loader yields, in order."""
    return [k for batch in loader for k in batch["key"]]
