"""A fine-tuning run's directory: locked for the run's life, never another run's files overwritten.

A directory "holds a run" when it has any file a run writes (`RUN_FILES`: run_config.yaml, metrics.json,
metrics.jsonl, checkpoints/, tensorboard/). A fresh run (no `--resume`) into such a directory would overwrite its
weights and metrics and leave its resume checkpoint beside the new run, so it is refused, whatever the configs:
`--resume DIR` continues that run, `--overwrite` removes those files first. Other files are left alone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import OutputError
from ..outputs import OutputLock, hold

RUN_FILES = ("run_config.yaml", "metrics.json", "metrics.jsonl", "checkpoints", "tensorboard")


def held_run(out: Path) -> str | None:
    """What run `out` holds, in words (e.g. 'a finished run (metrics.json, best epoch 3)'), or None."""
    found = [name for name in RUN_FILES if (out / name).exists()]
    if not found:
        return None
    if "metrics.json" in found:
        try:
            best = json.loads((out / "metrics.json").read_text()).get("best_epoch")
        except (OSError, ValueError, AttributeError):
            best = None
        return f"a finished run (metrics.json{f', best epoch {best}' if best is not None else ''})"
    if (out / "checkpoints" / "resume" / "train_state.pt").exists():
        return "an interrupted run (checkpoints/resume/train_state.pt)"
    return f"another run's files ({', '.join(found)})"


def claim_run_dir(out: Path, resume: bool = False, overwrite: bool = False) -> OutputLock:
    """Lock `out` for this run; refuse (or with `overwrite` clear) another run's files unless resuming.

    Raises:
        OutputError: another process writes `out`, `out` cannot be written, or it holds a run (not resuming and
            no `overwrite`).
    """
    lock = hold(out, "finetune")
    try:
        held = None if resume else held_run(out)
        if held and not overwrite:
            hint = f"continue it with `mmfuse finetune --resume {out}`, " if "interrupted" in held else ""
            raise OutputError(f"--out {out} holds {held}; a new run would overwrite it: {hint}pass --overwrite to "
                              f"replace it, or choose another --out")
        if held:
            for name in RUN_FILES:
                path = out / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif path.exists() or path.is_symlink():
                    path.unlink()
    except BaseException:
        lock.release()
        raise
    return lock
