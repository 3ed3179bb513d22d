"""`export_embeddings`: items -> Parquet parts (resumable) -> the MMRec layout and metadata.json.

    <out>/export.json          what this export reads and with which model and options (a resume must match)
    <out>/parts/part-*.parquet id, fused, per-modality vectors of `part_size` input rows each (see `parts.py`)
    <out>/fused_feat.npy       (N, D) float32, row i = item i of i_id_mapping.csv
    <out>/<modality>_feat.npy  (N, D) float32 per modality the model reads (zeros where the item lacks it)
    <out>/i_id_mapping.csv     tab-separated `item_id`, `itemID` (the row index), MMRec's item-id map
    <out>/rejects.jsonl        every input row that was not exported, or exported with a modality dropped
    <out>/metadata.json        model fingerprint, dims, normalisation, missing-modality treatment, counts, files
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..inference import Embedder
from ..outputs import LOCK, atomic_file, hold, write_atomic
from ..records import windows
from .parts import part_meta, part_path, read_ids, read_vectors, remove_partial, write_part
from .sources import Item

FORMAT = "mmfuse-embeddings/1"
MISSING = ("A modality an item lacks is left out of the fusion (the fusion is mask-aware), so the fused vector "
           "comes from the item's other modalities; its per-modality vector is null in the Parquet parts and a "
           "zero row in <modality>_feat.npy.")


@dataclass
class ExportOptions:
    """How `export_embeddings` writes (the CLI maps its flags onto these fields)."""

    out: str
    part_size: int = 10_000
    """Input rows per Parquet part: the unit of resumption."""
    normalize: bool = False
    """L2-normalise every vector (fused and per modality)."""
    modalities: list[str] | None = None
    """Embed from these modalities only (default: all the model reads)."""
    bad_media: str = "skip"
    """An unreadable or missing media file: 'skip' the row, or embed it with that modality 'absent'."""
    strict: bool = False
    """Stop at the first bad row with a one-line `DataError` instead of listing it in rejects.jsonl."""
    progress: bool = True

    def __post_init__(self) -> None:
        if self.part_size < 1:
            raise ConfigError(f"part size must be >= 1, got {self.part_size}")
        if self.bad_media not in ("skip", "absent"):
            raise ConfigError(f"bad_media must be 'skip' or 'absent', got '{self.bad_media}'")


def _plan(embedder: Embedder, options: ExportOptions, source: dict[str, Any], selected: list[str]) -> dict:
    return {"format": FORMAT, "source": source,
            "model": {"source": embedder.source, "fingerprint": embedder.fingerprint(), "backend": embedder.backend,
                      **({"precision": embedder.precision} if embedder.precision != "fp32" else {})},
            "modalities": selected, "dim": embedder.dim, "normalize": options.normalize,
            "part_size": options.part_size, "bad_media": options.bad_media}


def _start(out: Path, plan: dict[str, Any]) -> None:
    """Create `out` with export.json, or check that the export already in `out` is the same one."""
    file = out / "export.json"
    if file.exists():
        old = json.loads(file.read_text())
        changed = sorted(k for k in plan if old.get(k) != plan[k])
        if changed:
            raise DataError(f"{out} holds an export with other {', '.join(changed)}; resume it with the same "
                            f"input, model and options, or write to a new --out")
        return
    if out.exists() and any(p.name not in ("parts", LOCK) for p in out.iterdir()):
        raise DataError(f"output directory {out} is not empty and holds no mmfuse export")
    (out / "parts").mkdir(parents=True, exist_ok=True)
    write_atomic(file, json.dumps(plan, indent=2))


def export_embeddings(embedder: Embedder, items: Iterable[Item], options: ExportOptions, source: dict[str, Any],
                      total: int | None = None, on_part: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """Embed `items` into `options.out` part by part, skipping parts a previous run finished; returns metadata.

    `on_part(index)` is called after each part is written (progress hooks; raising there interrupts the export).
    `options.out` is locked while the export runs: a second export into it is refused, naming this one.
    """
    out = Path(options.out)
    selected = embedder.select(options.modalities)
    plan = _plan(embedder, options, source, selected)
    with hold(out, "embed"):
        _start(out, plan)
        return _export(embedder, items, options, plan, out, selected, total, on_part)


def _export(embedder: Embedder, items: Iterable[Item], options: ExportOptions, plan: dict[str, Any], out: Path,
            selected: list[str], total: int | None, on_part: Callable[[int], Any] | None) -> dict[str, Any]:
    from ..progress import progress_bar

    parts_dir = out / "parts"
    remove_partial(parts_dir)
    seen: set[str] = set()
    count = resumed = 0
    with progress_bar(total=total, unit="item", desc="mmfuse embed", disable=not options.progress) as bar:
        for index, (first, chunk) in enumerate(windows(items, options.part_size)):
            path = part_path(parts_dir, index)
            if path.exists():
                seen.update(read_ids(path))
                resumed += 1
            else:
                _write_part(embedder, chunk, first, index, path, selected, options, seen)
            count = index + 1
            bar.update(len(chunk))
            if on_part is not None:
                on_part(index)
    return _finish(out, plan, count, resumed)


def _write_part(embedder: Embedder, chunk: list[Item], first: int, index: int, path: Path, selected: list[str],
                options: ExportOptions, seen: set[str]) -> None:
    rejected, degraded, ids, samples = [], [], [], []
    for row, item in enumerate(chunk, first):
        failed = {m: r for m, r in item.failed.items() if m in selected}  # an unread modality cannot fail
        reason = item.error or (f"id: duplicate id (an earlier row has '{item.id}')" if item.id in seen else "")
        sample = None
        if not reason:
            decoded: dict[str, str] = {}
            sample = embedder.prepare(item.record, row, selected, failed=decoded)
            failed.update({m: f"cannot decode: {r}" for m, r in decoded.items()})
            if failed and options.bad_media == "skip":
                reason = "; ".join(f"{m}: {r}" for m, r in sorted(failed.items()))
            elif all(sample[m] is None for m in selected):
                reason = f"no {', '.join(selected)}"
        if reason and options.strict:
            raise DataError(f"{item.where}: item '{item.id}': {reason}")
        if reason:
            field = ",".join(part.partition(": ")[0] for part in reason.split("; "))
            rejected.append({"row": row, "where": item.where, "id": item.id, "field": field, "reason": reason})
            continue
        if failed:
            degraded.append({"row": row, "where": item.where, "id": item.id, "absent": failed})
        seen.add(item.id)
        ids.append(item.id)
        samples.append(sample)
    if samples:
        emb = embedder.embed_prepared(samples, selected)
    else:
        emb = {"fused": torch.zeros(0, embedder.dim), **{m: torch.zeros(0, embedder.dim) for m in selected},
               **{f"present_{m}": torch.zeros(0, dtype=torch.bool) for m in selected}}
    vectors = {name: emb[name] for name in ["fused", *selected]}
    if options.normalize:
        vectors = {k: torch.nn.functional.normalize(v, dim=-1) for k, v in vectors.items()}
    keep = _finite_rows(vectors, emb, selected, chunk, first, ids, options.strict, rejected)
    if not bool(keep.all()):
        seen.difference_update(i for i, k in zip(ids, keep.tolist(), strict=True) if not k)
        ids = [i for i, k in zip(ids, keep.tolist(), strict=True) if k]
        rejected.sort(key=lambda r: r["row"])
        degraded = [d for d in degraded if d["id"] in set(ids)]
        vectors = {k: v[keep] for k, v in vectors.items()}
        emb = {**emb, **{f"present_{m}": emb[f"present_{m}"][keep] for m in selected}}
    write_part(path, ids, {k: v.numpy() for k, v in vectors.items()},
               {m: emb[f"present_{m}"].numpy() for m in selected},
               {"part": index, "first_row": first, "rows": len(chunk), "rejected": rejected, "degraded": degraded})


def _finite_rows(vectors: dict[str, torch.Tensor], emb: dict[str, torch.Tensor], selected: list[str],
                 chunk: list[Item], first: int, ids: list[str], strict: bool, rejected: list[dict[str, Any]]
                 ) -> torch.Tensor:
    """(N,) bool: rows whose fused vector and present modalities' vectors are finite. Each other row is added to
    `rejected` (or raises `DataError` when `strict`): a NaN / Inf vector is never written."""
    keep = torch.isfinite(vectors["fused"]).all(dim=-1)
    bad_fields = {i: ["fused"] for i in range(len(ids)) if not keep[i]}
    for m in selected:
        ok = torch.isfinite(vectors[m]).all(dim=-1) | ~emb[f"present_{m}"]
        for i in (~ok).nonzero().flatten().tolist():
            bad_fields.setdefault(i, []).append(m)
        keep &= ok
    if not bad_fields:
        return keep
    where: dict[str, tuple[int, str]] = {}
    for row, item in enumerate(chunk, first):  # the first row of an id is the one exported
        where.setdefault(item.id, (row, item.where))
    for i, fields in sorted(bad_fields.items()):
        row, place = where[ids[i]]
        reason = f"{','.join(fields)}: non-finite embedding (NaN or Inf values)"
        if strict:
            raise DataError(f"{place}: item '{ids[i]}': {reason}")
        rejected.append({"row": row, "where": place, "id": ids[i], "field": ",".join(fields), "reason": reason})
    return keep


def _finish(out: Path, plan: dict[str, Any], count: int, resumed: int) -> dict[str, Any]:
    """Join the parts into the MMRec layout, rejects.jsonl and metadata.json (each file written atomically)."""
    paths = [part_path(out / "parts", i) for i in range(count)]
    metas = [part_meta(p) for p in paths]
    names = ["fused", *plan["modalities"]]
    total = sum(len(read_ids(p)) for p in paths)
    ids: list[str] = []
    present: Counter[str] = Counter()
    with contextlib.ExitStack() as files:  # each matrix renamed into place at the end, removed on an error
        tmp = {name: files.enter_context(atomic_file(out / f"{name}_feat.npy")) for name in names}
        matrices = {name: np.lib.format.open_memmap(tmp[name], mode="w+", dtype=np.float32,
                                                    shape=(total, plan["dim"])) for name in names}
        for path in paths:
            part_ids, vectors, valid = read_vectors(path, names)
            for name in names:
                matrices[name][len(ids):len(ids) + len(part_ids)] = vectors[name]
            present.update({m: int(v.sum()) for m, v in valid.items() if m != "fused"})
            ids += part_ids
        for name in names:
            matrices[name].flush()
            del matrices[name]
    rejected = [r for m in metas for r in m["rejected"]]
    degraded = [d for m in metas for d in m["degraded"]]
    write_atomic(out / "i_id_mapping.csv", "item_id\titemID\n" + "".join(f"{i}\t{n}\n" for n, i in enumerate(ids)))
    write_atomic(out / "rejects.jsonl", "".join(json.dumps({**r, "exported": False}) + "\n" for r in rejected) +
                "".join(json.dumps({**d, "exported": True}) + "\n" for d in degraded))
    reasons = Counter(kind for r in rejected for kind in reason_kinds(r["reason"]))
    meta = {
        **plan, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dims": {name: plan["dim"] for name in names},
        "missing_modalities": MISSING,
        "counts": {"input_rows": sum(m["rows"] for m in metas), "exported": total, "rejected": len(rejected),
                   "exported_with_a_modality_dropped": len(degraded), "present": dict(present),
                   "reasons": dict(reasons.most_common())},
        "parts": {"count": count, "resumed": resumed},
        "files": {"parts": "parts/part-*.parquet", "ids": "i_id_mapping.csv", "rejects": "rejects.jsonl",
                  **{name: f"{name}_feat.npy" for name in names}},
    }
    write_atomic(out / "metadata.json", json.dumps(meta, indent=2))
    return meta


def reason_kinds(reason: str) -> list[str]:
    """'image: missing file /x/y.jpg; audio: cannot decode: ...' -> ['image: missing file', 'audio: cannot decode']
    (each field's reason without its particulars, for counting)."""
    kinds = []
    for part in reason.split("; "):
        field, sep, text = part.partition(": ")
        for cut in (" /", " '", ":", " ("):
            text = text.split(cut)[0]
        kinds.append(f"{field}: {text}" if sep else field)
    return kinds

