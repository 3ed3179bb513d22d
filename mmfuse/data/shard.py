"""`write_shards(ShardConfig)`: a manifest + media files -> checked WebDataset shards, `dataset.json`, `rejects.jsonl`.

Two passes. The first reads the manifest and refuses rows with no key, a duplicate key, a key with a '.', no label,
an unknown label, a target that is not a finite number (regression) or no split. The second reads and fully decodes
every media file in a pool of worker processes
(`mmfuse.data.checks.check_row`), and writes the accepted samples in manifest order, one `SplitWriter` per split.
Every refused row goes to `rejects.jsonl` as {line, key, field, reason}; with `strict` the first one raises.
"""

from __future__ import annotations

import json
import multiprocessing
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import DataError, FieldError
from ..names import split_name_problem
from ..outputs import atomic_dir, hold
from ..progress import progress_bar
from .checks import check_row
from .info import write_dataset_json
from .manifest import ShardConfig, hash_split, require_columns
from .rows import read_manifest
from .targets import Joined, TargetKind, get_kind
from .writer import SplitWriter

MODALITY_OF = {"txt": "text", "jpg": "image", "png": "image", "webp": "image", "gif": "image",
               "wav": "audio", "flac": "audio", "ogg": "audio", "mp3": "audio", "aiff": "audio", "w64": "audio"}


@dataclass
class ShardReport:
    """What `write_shards` did: accepted samples per split, refused rows per reason, where it wrote."""

    out: Path
    counts: dict[str, int]
    rejected: int
    reasons: dict[str, int] = field(default_factory=dict)
    joined: Joined | None = None
    """What the target kind took from a file beside the manifest (interactions: the pair file)."""

    def summary(self) -> str:
        splits = ", ".join(f"{s} {n}" for s, n in self.counts.items())
        text = f"mmfuse: wrote {sum(self.counts.values())} samples ({splits}) to {self.out}"
        if self.rejected:
            reasons = ", ".join(f"{r} x{n}" for r, n in sorted(self.reasons.items(), key=lambda x: -x[1]))
            text += f"; refused {self.rejected} rows, listed in {self.out / 'rejects.jsonl'}: {reasons}"
        if self.joined is not None:
            text += f"; {self.joined.summary(self.out)}"
        return text


@dataclass
class _Task:
    line: int
    key: str
    row: dict[str, Any]
    cell: Any
    """The record's supervision as its target kind parsed it (`TargetKind.parse` / `join`)."""
    split: str


class _Rejects:
    """Collects refused rows. When strict, raises the first one in manifest order: a refusal found while planning
    is held until the media checks reach its line (`before`), so an earlier bad file still comes first."""

    def __init__(self, config: ShardConfig) -> None:
        self.config, self.rows = config, []

    def add(self, line: int, key: Any, field_: str, reason: str, hold: bool = False) -> None:
        self.rows.append({"line": line, "key": key, "field": field_, "reason": reason})
        if self.config.strict and not hold:
            self.raise_first()

    def before(self, line: int) -> None:
        if self.config.strict and self.rows and min(r["line"] for r in self.rows) < line:
            self.raise_first()

    def raise_first(self) -> None:
        if self.rows:
            r = min(self.rows, key=lambda r: r["line"])
            raise DataError(f"{self.config.manifest}:{r['line']}: record '{r['key']}': {r['field']}: {r['reason']}")

    def reasons(self) -> dict[str, int]:
        return dict(Counter(f"{r['field']}: {_short(r['reason'])}" for r in sorted(self.rows, key=lambda r: r['line'])))


def _plan(config: ShardConfig, kind: TargetKind, rejects: _Rejects) -> list[_Task]:
    """First pass: keys, labels and splits; no file is opened."""
    tasks, seen = [], {}
    add = partial(rejects.add, hold=True)
    vocabulary = set(config.labels) if config.labels is not None else None
    found: dict[str, None] = {}
    for line, row, error in read_manifest(config.manifest):
        if row is None:
            add(line, None, "manifest", error)
            continue
        found.update(dict.fromkeys(str(k) for k in row))
        key = row.get(config.key)
        key = "" if key is None else str(key).strip()
        split = hash_split(key, config.fractions) if config.split is None else str(row.get(config.split) or "")
        try:
            cell, refusal = kind.parse(row, config, vocabulary), None
        except FieldError as err:
            cell, refusal = None, err
        if not key:
            add(line, None, config.key, "missing key")
        elif "." in key or key.startswith("/") or key.endswith("/"):
            add(line, key, config.key, "key contains '.' or starts/ends with '/' (invalid tar member name)")
        elif key in seen:
            add(line, key, config.key, f"duplicate key (first on line {seen[key]})")
        elif refusal is not None:
            add(line, key, refusal.field, refusal.reason)
        elif not split.strip():
            add(line, key, config.split or "split", "missing split")
        elif (problem := split_name_problem(split.strip())) is not None:  # it becomes a file-name prefix
            raise DataError(f"{config.manifest}:{line}: record '{key}': {config.split or 'split'}: {problem}")
        else:
            tasks.append(_Task(line, key, row, cell, split.strip()))
        if key and key not in seen:
            seen[key] = line
    require_columns(config.manifest, list(found), *config.columns())  # a typo'd column: one error, not N rejects
    return tasks


def _join(joined: Joined, tasks: list[_Task], rejects: _Rejects) -> list[_Task]:
    """Each planned record's cell from the file beside the manifest; records it gives none are refused."""
    kept = []
    for task in tasks:
        if task.key in joined.cells:
            task.cell = joined.cells[task.key]
            kept.append(task)
        else:
            rejects.add(task.line, task.key, *joined.missing, hold=True)
    return kept


def _check(config: ShardConfig, kind: TargetKind, index: dict[str, int], task: _Task
           ) -> tuple[_Task, dict[str, Any] | None, Any]:
    try:
        return task, check_row(config, task.row, task.key, kind.encode(task.cell, index)), None
    except FieldError as err:
        return task, None, (err.field, err.reason)


def _results(config: ShardConfig, kind: TargetKind, index: dict[str, int], tasks: list[_Task]):
    """(task, sample or None, refusal) per task, in order; with several workers, from a process pool.

    A worker that dies (a decoder crash, the OOM killer) breaks the pool: that is a `DataError` naming the manifest
    lines being checked, never a wait on the dead process.
    """
    check = partial(_check, config, kind, index)
    if config.workers == 1 or not tasks:
        yield from map(check, tasks)
        return
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    import torchvision.io  # noqa: F401 - imported once here (seconds), shared by the forked workers

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    chunk = max(1, min(64, len(tasks) // (config.workers * 8)))
    pool = ProcessPoolExecutor(config.workers, mp_context=multiprocessing.get_context(method))
    done = 0
    try:
        for result in pool.map(check, tasks, chunksize=chunk):
            done += 1
            yield result
    except BrokenProcessPool:
        first, last = tasks[done], tasks[min(len(tasks), done + config.workers * chunk) - 1]
        raise DataError(f"{config.manifest}: a media check worker process died (crashed or was killed) while "
                        f"checking lines {first.line}-{last.line} (from record '{first.key}')") from None
    finally:  # a strict refusal stops early: drop the checks not started, never wait for them
        pool.shutdown(wait=False, cancel_futures=True)


def _modalities(formats: dict[str, Counter]) -> dict[str, list[str]]:
    order = ["text", "image", "audio"]
    return {m: [ext for ext, _ in formats[m].most_common()] for m in order if formats.get(m)}


def write_shards(config: ShardConfig) -> ShardReport:
    """Check every manifest row and write the accepted ones as shards in `config.out` (see the module doc).

    `config.out` is locked (beside it, as it is renamed into place at the end) while the shards are written: a
    second `write_shards` into it is refused, naming this one.
    """
    out = Path(config.out)
    with hold(out, "shard", beside=True):
        if out.exists() and any(out.iterdir()):
            raise DataError(f"output directory {out} is not empty (remove it or choose another --out)")
        return _write_shards(config, out)


def _write_shards(config: ShardConfig, out: Path) -> ShardReport:
    kind = get_kind(config.task)
    rejects = _Rejects(config)
    tasks = _plan(config, kind, rejects)
    joined = kind.join(config, {t.key for t in tasks})
    if joined is not None:
        tasks = _join(joined, tasks, rejects)
    names = kind.vocabulary(config, (t.cell for t in tasks))
    index = {name: i for i, name in enumerate(names)}
    with atomic_dir(out) as tmp:
        writers: dict[str, SplitWriter] = {}
        formats: dict[str, Counter] = {}
        accepted: list[tuple[str, Any]] = []
        bar = progress_bar(total=len(tasks), desc="shard", unit="rec", disable=not config.progress, dynamic_ncols=True)
        try:
            for task, sample, refused in _results(config, kind, index, tasks):
                bar.update(1)
                rejects.before(task.line)
                if sample is None:
                    rejects.add(task.line, task.key, *refused)
                    if joined is not None:  # what it joined goes with it, counted
                        joined.drop(task.cell)
                    continue
                if task.split not in writers:
                    writers[task.split] = SplitWriter(tmp, task.split, config.shard_size, config.shard_bytes)
                writers[task.split].write(sample)
                accepted.append((task.split, task.cell))
                for ext in sample:
                    if ext in MODALITY_OF:
                        formats.setdefault(MODALITY_OF[ext], Counter())[ext] += 1
            if config.strict:
                rejects.raise_first()
        finally:
            bar.close()
            for writer in writers.values():
                writer.close()
        splits = {name: writers[name].entry() for name in sorted(writers, key=_split_order)}
        write_dataset_json(tmp, {
            "name": out.name, "modalities": _modalities(formats), "formats": {m: dict(c) for m, c in formats.items()},
            "task": config.task, **kind.describe(config, names, accepted), **(joined.meta() if joined else {}),
            "splits": splits, "rejected": len(rejects.rows),
            "source": {"manifest": str(Path(config.manifest).resolve()), "config": asdict(config)}})
        rows = sorted(rejects.rows, key=lambda r: r["line"])
        (tmp / "rejects.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        for name, text in (joined.files() if joined else {}).items():
            (tmp / name).write_text(text)
    return ShardReport(out, {s: e["count"] for s, e in splits.items()}, len(rejects.rows), rejects.reasons(), joined)


def _short(reason: str) -> str:
    """A reason without its details (path, decoder message, line number), to count reasons in the summary."""
    return reason.split(" /")[0].split(":")[0].split(" (")[0]


def _split_order(name: str) -> tuple[int, str]:
    return (["train", "val", "test"].index(name) if name in ("train", "val", "test") else 3, name)
