"""interactions: the users of each item, from a pair file (user, item) beside the manifest (`mmfuse.data.pairs`);
shard member `.usr` "0,7" (indices into `dataset.json` `users`); batch `users` (B, L) int64, padded with -1."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...errors import DataError, FieldError
from ..pairs import PairReport, attach_pairs, read_pairs
from .base import Described, ShardOptions, TargetKind

USERS_MEMBER = "usr"


def pad_users(rows: list[torch.Tensor]) -> torch.Tensor:
    """Each item's user indices, padded with -1 to the longest list. Returns (B, L) int64 (L >= 1)."""
    width = max([1, *(len(r) for r in rows)])
    out = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


@dataclass
class Pairs:
    """The pair file joined to the planned items: each item's users (its cell) and what joining did."""

    cells: dict[str, list[str]]
    report: PairReport
    rejects: list[dict[str, Any]] = field(default_factory=list)
    missing: tuple[str, str] = ("users", "no interactions in the pair file")

    def drop(self, cell: list[str]) -> None:
        self.report.drop("pair of a refused item", len(cell))

    def meta(self) -> dict[str, Any]:
        return {"interactions": asdict(self.report)}

    def files(self) -> dict[str, str]:
        return {"pair_rejects.jsonl": "".join(json.dumps(r) + "\n" for r in self.rejects)}

    def summary(self, out: Path) -> str:
        text = self.report.summary()
        return text + (f", listed in {out / 'pair_rejects.jsonl'}" if self.report.rejected else "")


class Interactions(TargetKind):
    """The cell is the item's user names (in pair-file order); the vocabulary is every user."""

    name = "interactions"
    entry = "users"
    options = {"interactions": "an interactions manifest needs --interactions PAIRS.csv|jsonl; other tasks take none"}

    def join(self, config: ShardOptions, keys: set[str]) -> Pairs:
        users, rejects, report = attach_pairs(read_pairs(config.interactions, config.user_column,
                                                         config.item_column), keys)
        return Pairs(users, report, rejects)

    def vocabulary(self, config: ShardOptions, cells: Iterable[list[str]]) -> list[str]:
        return sorted({user for cell in cells for user in cell})

    def encode(self, cell: list[str], index: dict[str, int]) -> dict[str, str]:
        return {USERS_MEMBER: ",".join(str(index[u]) for u in cell)}

    def describe(self, config: ShardOptions, vocabulary: list[str], accepted: list[tuple[str, Any]]
                 ) -> dict[str, Any]:
        return {"label_field": "cls", "labels": [], "users": vocabulary}

    def check(self, file: Path, info: Described) -> None:
        if not info.users:
            raise DataError(f"{file}: an interactions dataset needs its user vocabulary in 'users'")

    def members(self, info: Described) -> tuple[str, ...]:
        return (USERS_MEMBER,)

    def decode(self, raw: dict[str, Any], info: Described) -> dict[str, Any]:
        data = raw.get(USERS_MEMBER)
        if data is None:
            raise FieldError("users", f"no '.{USERS_MEMBER}' member")
        text = data.decode("utf-8", "replace").strip()
        try:
            indices = [int(p) for p in text.split(",")] if text else []
        except ValueError:
            raise FieldError("users", f"not a list of integers: {text[:20]!r}") from None
        bad = [i for i in indices if not 0 <= i < len(info.users)]
        if bad:
            raise FieldError("users", f"index {bad[0]} outside the {len(info.users)} users")
        return {"users": torch.tensor(indices, dtype=torch.long)}

    def collate(self, values: list[torch.Tensor]) -> torch.Tensor:
        return pad_users(values)
