"""Reading a JSONL or CSV table row by row (manifests, pair files), each bad row reported, never fatal."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DataError


def read_manifest(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """Yield (line number, row, error) per record; a row that cannot be parsed has `row=None` and the error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # a BOM (Excel's CSV) is not part of a name
            yield from (_csv_rows(f) if path.suffix.lower() == ".csv" else _jsonl_rows(f))
    except UnicodeDecodeError as err:
        raise DataError(f"manifest {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except csv.Error as err:
        raise DataError(f"manifest {path} is not valid CSV: {err}") from None


def _csv_rows(f) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    reader = csv.DictReader(f)
    for row in reader:
        if None in row:
            yield reader.line_num, None, f"{len(row[None])} more cells than header columns"
        else:
            yield reader.line_num, row, ""


def _jsonl_rows(f) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    for number, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            yield number, None, f"invalid JSON: {err}"
            continue
        yield (number, row, "") if isinstance(row, dict) else (number, None, "a line must be a JSON object")
