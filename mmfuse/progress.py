"""Progress bars that suit where they write: a normal tqdm on a terminal (or in a notebook), a sparse one in a log.

A `mmfuse finetune > log 2>&1` gets, from a plain tqdm, every refresh of every bar (ten a second, each a `\\r` and a
whole bar line). Writing to something that is not a terminal, `progress_bar` keeps the bar but refreshes it at most
every `SPARSE_INTERVAL` seconds: tqdm's own `mininterval` (the least time between two writes) with `maxinterval`
raised to match (else tqdm's monitor thread forces a write every 10 s of a slow bar). The bar still opens and
closes in the log, and a long epoch still shows it is alive. (`disable=None`, tqdm's switch for a non-terminal,
would leave a long run's log with no sign of progress at all.) `TQDM_MININTERVAL` / `TQDM_MAXINTERVAL` in the
environment still win.
"""

from __future__ import annotations

import os
import sys
from typing import Any

SPARSE_INTERVAL = 30.0
"""Least seconds between two writes of a bar whose output is not a terminal."""


def progress_bar(**kwargs: Any) -> Any:
    """A `tqdm.auto.tqdm(**kwargs)` that writes at most every `SPARSE_INTERVAL` s when its file is not a TTY."""
    from tqdm.auto import tqdm

    if not is_terminal(kwargs.get("file") or sys.stderr) and not _in_notebook(tqdm):
        for name in ("mininterval", "maxinterval"):
            if f"TQDM_{name.upper()}" not in os.environ:
                kwargs[name] = max(SPARSE_INTERVAL, kwargs.get(name) or 0.0)
    return tqdm(**kwargs)


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def _in_notebook(tqdm_class: type) -> bool:
    """tqdm.auto chose the Jupyter widget (its output is no TTY, but it redraws in place)."""
    return any(cls.__module__ == "tqdm.notebook" for cls in tqdm_class.__mro__)
