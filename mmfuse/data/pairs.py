"""Interaction pair files: which user interacted with which item, the supervision of the `interactions` task.

A pair file is JSONL (`{"user": "u1", "item": "item-000003"}` per line) or CSV with a header (`user,item`); other
columns (weight, timestamp, ...) are allowed and ignored. `mmfuse shard --task interactions --interactions
pairs.csv` reads it beside the item manifest: each item's sample then carries the users that interacted with it
(`.usr`, indices into `dataset.json` `users`). A row without a user or an item stops with a one-line `DataError`
naming file, line and field. Pairs naming an item the manifest lacks and repeated pairs are counted and listed in
`pair_rejects.jsonl`; items without any pair are refused like other bad rows (`rejects.jsonl`).

Held-out protocol (cold-start items): a pair belongs to the split of its item, so training sees only the pairs of
train-split items and evaluation ranks val/test items that no training step has seen.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from .rows import read_manifest


@dataclass
class Pair:
    line: int
    user: str
    item: str


@dataclass
class PairReport:
    """What attaching a pair file to the items did."""

    read: int = 0
    """Pair rows in the file."""
    attached: int = 0
    """Pairs attached to an item (unique per user and item)."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Pairs left out, per reason ('unknown item', 'duplicate pair', 'pair of a refused item')."""
    users: int = 0
    """Distinct users of the attached pairs."""

    def drop(self, reason: str, count: int) -> None:
        """`count` attached pairs left out after all (their item was refused)."""
        self.attached -= count
        self.rejected[reason] = self.rejected.get(reason, 0) + count

    def summary(self) -> str:
        text = f"{self.attached} of {self.read} interaction pairs attached ({self.users} users)"
        if self.rejected:
            text += "; left out: " + ", ".join(f"{r} x{n}" for r, n in self.rejected.items())
        return text


def _cell(row: dict[str, Any], column: str, path: Path, line: int) -> str:
    value = row.get(column)
    text = "" if value is None else str(value).strip()
    if not text:
        raise DataError(f"{path}:{line}: {column}: missing value (each pair needs a value in column '{column}')")
    return text


def read_pairs(path: str | Path, user: str = "user", item: str = "item") -> list[Pair]:
    """Every row of a pair file, in file order; a row that cannot be read raises a one-line `DataError`."""
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".csv"):
        raise DataError(f"interactions file {path}: expected a .jsonl or .csv file")
    if not path.is_file():
        raise DataError(f"interactions file {path} does not exist")
    pairs = []
    for line, row, error in read_manifest(path):
        if row is None:
            raise DataError(f"{path}:{line}: {error}")
        pairs.append(Pair(line, _cell(row, user, path, line), _cell(row, item, path, line)))
    if not pairs:
        raise DataError(f"interactions file {path} holds no pairs")
    return pairs


def attach_pairs(pairs: list[Pair], items: set[str]) -> tuple[dict[str, list[str]], list[dict[str, Any]],
                                                                PairReport]:
    """Each known item's users (in file order), the left-out pairs ({line, user, item, reason}) and a report."""
    users: dict[str, list[str]] = {}
    seen: dict[tuple[str, str], int] = {}
    rejects = []
    for pair in pairs:
        if pair.item not in items:
            rejects.append({"line": pair.line, "user": pair.user, "item": pair.item, "reason": "unknown item"})
        elif (pair.user, pair.item) in seen:
            rejects.append({"line": pair.line, "user": pair.user, "item": pair.item,
                            "reason": f"duplicate pair (first on line {seen[pair.user, pair.item]})"})
        else:
            seen[pair.user, pair.item] = pair.line
            users.setdefault(pair.item, []).append(pair.user)
    reasons = Counter(r["reason"].split(" (")[0] for r in rejects)
    report = PairReport(read=len(pairs), attached=len(seen), rejected=dict(reasons),
                        users=len({u for u, _ in seen}))
    return users, rejects, report
