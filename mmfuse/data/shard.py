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
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..names import split_name_problem
from ..outputs import hold
from ..progress import progress_bar
from .checks import Refused, check_row
from .info import FORMAT
from .manifest import ShardConfig, hash_split, read_manifest, require_columns
from .pairs import PairReport, attach_pairs, read_pairs
from .targets import TARGET_MEMBER, USERS_MEMBER, FieldError, parse_label_list, parse_number
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
    pairs: PairReport | None = None
    """Interactions: what attaching the pair file did."""

    def summary(self) -> str:
        splits = ", ".join(f"{s} {n}" for s, n in self.counts.items())
        text = f"mmfuse: wrote {sum(self.counts.values())} samples ({splits}) to {self.out}"
        if self.rejected:
            reasons = ", ".join(f"{r} x{n}" for r, n in sorted(self.reasons.items(), key=lambda x: -x[1]))
            text += f"; refused {self.rejected} rows, listed in {self.out / 'rejects.jsonl'}: {reasons}"
        if self.pairs is not None:
            text += f"; {self.pairs.summary()}"
            if self.pairs.rejected:
                text += f", listed in {self.out / 'pair_rejects.jsonl'}"
        return text


@dataclass
class _Task:
    line: int
    key: str
    row: dict[str, Any]
    labels: list[str]
    """The record's label name(s): one for classification, any number for multilabel, none otherwise."""
    values: list[float]
    """Regression target values, in `ShardConfig.targets` order."""
    split: str


def _supervision(config: ShardConfig, row: dict[str, Any], vocabulary: set[str] | None
                 ) -> tuple[list[str], list[float]]:
    """A row's label names and target values for `config.task`; raises `FieldError` naming the column."""
    if config.task in ("none", "interactions"):
        return [], []
    if config.task == "regression":
        return [], [parse_number(row.get(column), column) for column in config.targets]
    value = row.get(config.label)
    if value is None or (isinstance(value, str) and not value.strip() and config.task == "classification"):
        raise FieldError(config.label, "missing label")
    if config.task == "multilabel":
        try:
            names = parse_label_list(value, config.label_sep)
        except FieldError as err:
            raise FieldError(config.label, err.reason) from None
    else:
        names = [str(value).strip()]
    unknown = [n for n in names if vocabulary is not None and n not in vocabulary]
    if unknown:
        raise FieldError(config.label, f"unknown label '{unknown[0][:40]}'")
    return names, []


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


def _plan(config: ShardConfig, rejects: _Rejects) -> list[_Task]:
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
            names, values, refusal = *_supervision(config, row, vocabulary), None
        except FieldError as err:
            names, values, refusal = [], [], err
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
            tasks.append(_Task(line, key, row, names, values, split.strip()))
        if key and key not in seen:
            seen[key] = line
    require_columns(config.manifest, list(found), *config.columns())  # a typo'd column: one error, not N rejects
    return tasks


def _attach_users(config: ShardConfig, tasks: list[_Task], rejects: _Rejects
                  ) -> tuple[list[_Task], list[dict[str, Any]], PairReport]:
    """Interactions: each planned item's users from the pair file (in `task.labels`); items without any refused."""
    users, pair_rejects, report = attach_pairs(
        read_pairs(config.interactions, config.user_column, config.item_column), {t.key for t in tasks})
    kept = []
    for task in tasks:
        if task.key in users:
            task.labels = users[task.key]
            kept.append(task)
        else:
            rejects.add(task.line, task.key, "users", "no interactions in the pair file", hold=True)
    return kept, pair_rejects, report


def _target_members(config: ShardConfig, labels: dict[str, int], task: _Task) -> dict[str, str]:
    if config.task == "interactions":
        return {USERS_MEMBER: ",".join(str(labels[u]) for u in task.labels)}
    if config.task == "regression":
        return {TARGET_MEMBER: json.dumps(task.values)}
    if config.task == "none":
        return {}
    return {"cls": ",".join(str(labels[n]) for n in task.labels)}


def _check(config: ShardConfig, labels: dict[str, int], task: _Task) -> tuple[_Task, dict[str, Any] | None, Any]:
    try:
        return task, check_row(config, task.row, task.key, _target_members(config, labels, task)), None
    except Refused as err:
        return task, None, (err.field, err.reason)


def _results(config: ShardConfig, labels: dict[str, int], tasks: list[_Task]):
    """(task, sample or None, refusal) per task, in order; with several workers, from a process pool.

    A worker that dies (a decoder crash, the OOM killer) breaks the pool: that is a `DataError` naming the manifest
    lines being checked, never a wait on the dead process.
    """
    check = partial(_check, config, labels)
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
    rejects = _Rejects(config)
    tasks = _plan(config, rejects)
    pair_rejects, pairs = [], None
    if config.task == "interactions":  # the labels are then the users, the vocabulary every user
        tasks, pair_rejects, pairs = _attach_users(config, tasks, rejects)
    if config.labels is not None and config.task != "interactions":
        names = config.labels
    else:
        names = sorted({n for t in tasks for n in t.labels})
    labels = {name: index for index, name in enumerate(names)}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        writers: dict[str, SplitWriter] = {}
        formats: dict[str, Counter] = {}
        stats = _TargetStats(len(config.targets))
        bar = progress_bar(total=len(tasks), desc="shard", unit="rec", disable=not config.progress, dynamic_ncols=True)
        try:
            for task, sample, refused in _results(config, labels, tasks):
                bar.update(1)
                rejects.before(task.line)
                if sample is None:
                    rejects.add(task.line, task.key, *refused)
                    if pairs is not None:  # its pairs go with it, counted
                        pairs.drop("pair of a refused item", len(task.labels))
                    continue
                if task.split not in writers:
                    writers[task.split] = SplitWriter(tmp, task.split, config.shard_size, config.shard_bytes)
                writers[task.split].write(sample)
                stats.add(task.split, task.values)
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
        meta = {"format": FORMAT, "name": out.name, "modalities": _modalities(formats),
                "formats": {m: dict(c) for m, c in formats.items()}, "task": config.task,
                "label_field": TARGET_MEMBER if config.task == "regression" else "cls",
                "labels": names if config.task in ("classification", "multilabel") else [],
                **({"users": names, "interactions": asdict(pairs)} if pairs is not None else {}),
                **({"targets": list(config.targets), "target_stats": stats.result()} if config.targets else {}),
                "splits": splits, "rejected": len(rejects.rows),
                "source": {"manifest": str(Path(config.manifest).resolve()), "config": asdict(config)}}
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2))
        with open(tmp / "rejects.jsonl", "w") as f:
            for row in sorted(rejects.rows, key=lambda r: r["line"]):
                f.write(json.dumps(row) + "\n")
        if pairs is not None:
            (tmp / "pair_rejects.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pair_rejects))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ShardReport(out, {s: e["count"] for s, e in splits.items()}, len(rejects.rows), rejects.reasons(), pairs)


class _TargetStats:
    """Mean and std of each regression target over the train split (every split if there is no 'train')."""

    def __init__(self, width: int) -> None:
        self.sums = {split: [[0.0] * width, [0.0] * width, 0] for split in ("train", "all")}

    def add(self, split: str, values: list[float]) -> None:
        for part in ("train", "all") if split == "train" else ("all",):
            total, squares, _ = self.sums[part]
            for i, v in enumerate(values):
                total[i] += v
                squares[i] += v * v
            self.sums[part][2] += 1

    def result(self) -> dict[str, list[float]]:
        total, squares, n = self.sums["train"] if self.sums["train"][2] else self.sums["all"]
        mean = [t / max(n, 1) for t in total]
        std = [max(s / max(n, 1) - m * m, 0.0) ** 0.5 for s, m in zip(squares, mean, strict=True)]
        return {"mean": mean, "std": [s if s > 1e-12 else 1.0 for s in std]}


def _short(reason: str) -> str:
    """A reason without its details (path, decoder message, line number), to count reasons in the summary."""
    return reason.split(" /")[0].split(":")[0].split(" (")[0]


def _split_order(name: str) -> tuple[int, str]:
    return (["train", "val", "test"].index(name) if name in ("train", "val", "test") else 3, name)
