"""What the data gave, checked against what `dataset.json` promises: a pass over a split that yielded fewer samples
than listed (a shard cut short, unreadable shard data) is reported once per split, or refused (`data.strict`, and
always for the test split); the run's closing line counts skipped samples and ignored shard members."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from ..data.info import DatasetInfo
from ..data.loader import SHARD_REASON
from ..errors import DataError


def data_summary(skipped: Counter[str], ignored: Counter[str], incomplete: dict[str, dict[str, int]] | None = None
                 ) -> str:
    """The closing line about the data: samples skipped per reason, unreadable shard data per reason, splits that
    yielded fewer samples than dataset.json lists, shard members ignored (never decoded)."""
    samples = Counter({r: n for r, n in skipped.items() if not r.startswith(SHARD_REASON)})
    shards = Counter({r[len(SHARD_REASON):]: n for r, n in skipped.items() if r.startswith(SHARD_REASON)})
    line = f"mmfuse: skipped {sum(samples.values())} samples"
    if samples:
        line += ": " + ", ".join(f"{reason} x{n}" for reason, n in samples.most_common())
    if shards:
        line += "; unreadable shard data: " + ", ".join(f"{reason} x{n}" for reason, n in shards.most_common())
    if incomplete:
        line += "; samples unread: " + ", ".join(f"{split} {c['missing']} of {c['expected']}"
                                                 for split, c in incomplete.items())
    if ignored:
        line += "; ignored shard members: " + ", ".join(f"{kind} x{n}" for kind, n in ignored.most_common())
    return line


class Coverage:
    """The splits of a run that yielded fewer samples than dataset.json lists (`incomplete`, kept in a resumable
    checkpoint and in metrics.json)."""

    def __init__(self, info: DatasetInfo, strict: bool, echo: Callable[[str], Any]) -> None:
        self.info, self.strict, self.echo = info, strict, echo
        self.incomplete: dict[str, dict[str, int]] = {}

    def check(self, split: str, read: int, skipped: int, counts: dict[str, int], error: bool = False) -> None:
        """Report a pass over `split` that yielded fewer samples (`read` + `skipped`) than dataset.json lists, with
        the unreadable shard data in `counts`; an error when `error` (then more samples are one too) or `strict`."""
        expected = self.info.count(split)
        missing = expected - read - skipped
        if missing == 0 or (missing < 0 and not error):
            return
        shards = [f"{r[len(SHARD_REASON):]} x{n}" for r, n in counts.items() if r.startswith(SHARD_REASON)]
        why = "unreadable shard data: " + ", ".join(shards) if shards else "no read error: a shard ends early"
        text = (f"split '{split}' of {self.info.root} yielded {read} samples + {skipped} skipped of the {expected} "
                f"dataset.json lists: " + (f"{missing} unread ({why})" if missing > 0 else f"{-missing} too many"))
        if error or self.strict:
            raise DataError(text)
        if split not in self.incomplete:
            self.echo(f"mmfuse: warning: {text}")
        self.incomplete[split] = {"expected": expected, "read": read, "skipped": skipped, "missing": missing}
