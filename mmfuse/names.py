"""Names and paths that come from files mmfuse did not write itself (manifests, dataset.json, a run's config.json).

A split name becomes part of a file name, so it must be a plain identifier; a relative path read from a file must
stay inside the folder that file describes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""A split name: a letter or digit, then letters, digits, '_' or '-'; at most 64 characters."""
SPLIT_RULE = "a split name is letters, digits, '_' or '-' (not first), at most 64 characters"


def split_name_problem(name: object) -> str | None:
    """Why `name` cannot be a split name (it would not be a plain file-name prefix), or None if it can."""
    if not isinstance(name, str) or not SPLIT_NAME.fullmatch(name):
        return f"split name {_show(name)} is not allowed ({SPLIT_RULE})"
    return None


def inside(root: Path, relative: object) -> Path | None:
    """`root / relative` if `relative` is a relative path that stays inside `root` (after '..' and symbolic
    links are resolved), else None."""
    if not isinstance(relative, str) or not relative or "\x00" in relative or os.path.isabs(relative) \
            or relative.startswith("~"):
        return None
    path = root / relative
    base = root.resolve()
    try:
        path.resolve().relative_to(base)
    except ValueError:
        return None
    return path


def looks_like_path(value: object) -> bool:
    """Whether a string could name a file or a remote location rather than a plain name
    ('/', '\\', ':', a leading '.' or '~')."""
    return isinstance(value, str) and (any(c in value for c in "/\\:\x00") or value.startswith((".", "~")))


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
