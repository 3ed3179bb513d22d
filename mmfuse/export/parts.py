"""Parquet parts of an embedding export: one file per `part_size` input rows, each written atomically.

    parts/part-00000.parquet   columns id (string), fused (D float32), <modality> (D float32, null where absent);
                               schema metadata 'mmfuse' = {"part", "first_row", "rows", "rejected", "degraded"}

A part file exists only once it is complete (temp file + rename), so a resumed export skips exactly the finished
parts; leftover temp files of an interrupted write are removed and that part is redone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..outputs import atomic_file

META_KEY = b"mmfuse"


def part_path(directory: Path, index: int) -> Path:
    return directory / f"part-{index:05d}.parquet"


def remove_partial(directory: Path) -> int:
    """Delete temp files an interrupted write left in `directory`; returns how many."""
    stale = list(directory.glob(".part-*.tmp"))
    for path in stale:
        path.unlink()
    return len(stale)


def _vectors(values: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """(N, D) float32 -> a fixed-size-list array, null where `valid` is False."""
    n, dim = values.shape
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
    mask = None if valid is None else pa.array(~valid)
    return pa.FixedSizeListArray.from_arrays(flat, dim, mask=mask)


def write_part(path: Path, ids: list[str], vectors: dict[str, np.ndarray], present: dict[str, np.ndarray],
               meta: dict[str, Any]) -> None:
    """Write one part atomically. `vectors`: {'fused': (N, D), <m>: (N, D)}; `present`: {<m>: (N,) bool}."""
    columns = {"id": pa.array(ids, type=pa.string())}
    for name, values in vectors.items():
        columns[name] = _vectors(values, present.get(name))
    table = pa.table(columns).replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)


def part_meta(path: Path) -> dict[str, Any]:
    """The metadata of a written part (without reading its vectors)."""
    return json.loads(pq.read_schema(path).metadata[META_KEY])


def read_ids(path: Path) -> list[str]:
    return pq.read_table(path, columns=["id"]).column("id").to_pylist()


def read_vectors(path: Path, names: list[str]) -> tuple[list[str], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Ids, (N, D) float32 matrices (zero rows where a vector is null) and (N,) validity masks of a part."""
    table = pq.read_table(path, columns=["id", *names])
    vectors, valid = {}, {}
    for name in names:
        column = table.column(name).combine_chunks()
        mask = column.is_valid().to_numpy(zero_copy_only=False)
        values = np.zeros((len(column), column.type.list_size), dtype=np.float32)
        if mask.any():
            kept = column.filter(pa.array(mask)) if not mask.all() else column
            values[mask] = kept.flatten().to_numpy(zero_copy_only=False).reshape(int(mask.sum()), -1)
        vectors[name], valid[name] = values, mask
    return table.column("id").to_pylist(), vectors, valid
