"""One exception type per kind of user mistake; the CLI prints them in one line and exits non-zero."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MmfuseError(Exception):
    """Base class of every error mmfuse raises for a user mistake (never for a bug)."""


class ConfigError(MmfuseError, ValueError):
    """A run or model configuration is invalid: unknown key, bad value, unknown name."""


class DataError(MmfuseError, ValueError):
    """Input data is missing or malformed; the message names the file, sample key and field."""


class FieldError(Exception):
    """One record's `field` (a manifest column, modality or tar member) is unusable for `reason`. Not a user-facing
    error by itself: the shard writer lists the record in `rejects.jsonl` and the loader counts it as skipped (each
    raises a `DataError` naming file, record and field when strict)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


class RegistryError(ConfigError, KeyError):
    """An encoder or fusion name is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class TrainingError(MmfuseError, RuntimeError):
    """Training cannot go on: a non-finite loss or weights (too high a learning rate, a poisoned batch)."""


class OutputError(MmfuseError):
    """An output cannot be written: a file in the way, a read-only or unwritable folder, another process writing it,
    or another run's files that it would overwrite."""
