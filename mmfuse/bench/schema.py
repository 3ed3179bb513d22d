"""The report's JSON schema (`mmfuse-bench/1`) and a small validator, so readers can rely on its shape.

Changing a field's meaning or removing one bumps the version; adding optional fields does not.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

NUM = (int, float)
OPT_NUM = (int, float, type(None))
STAT = {"median": NUM, "q1": NUM, "q3": NUM, "iqr_rel": NUM, "values": list}
SCHEMA: dict[str, Any] = {
    "schema": str, "created": str, "tag": str, "command": list, "duration_s": NUM, "flags": list,
    "settings": {"preset": str, "device": str, "precision": str, "compile": bool, "workers": int, "repeats": int,
                 "warmup": int, "min_time": NUM, "data": str, "split": str},
    "environment": {"cpu": {"model": str, "logical_cpus": int, "usable_cpus": int, "isa": dict},
                    "gpu": (dict, type(None)), "python": str, "versions": dict, "torch": dict, "threads": dict,
                    "load_average_before": (list, type(None))},
    "calibration": {"op": str, "dtype": str, "size": int, "before_flops": NUM, "after_flops": NUM,
                    "peak_flops": NUM, "drift": NUM},
    "cases": [{"name": str, "kind": str, "towers": str, "modalities": list, "fusion": (str, type(None)),
               "batch_size": int, "steps_per_repeat": int, "unit": str, "seconds": NUM,
               "series": {"mmfuse": STAT, "baseline?": STAT},
               "ratio": (dict, type(None)), "cpu_ratio": (dict, type(None)),
               "cpu_series": dict, "flops_per_sample": OPT_NUM, "mfu": (dict, type(None)),
               "split": (dict, type(None)), "memory": {"kind": str, "bytes": int}}],
}
"""Nested dicts mirror the report; a type or tuple of types is a leaf; `[spec]` is a list of `spec`; a key ending
in `?` is optional."""

SPLIT = {"steps": int, "samples": int, "data_s": NUM, "compute_s": NUM, "data_fraction": NUM, "samples_per_s": NUM}


def _check(value: Any, spec: Any, where: str, problems: list[str]) -> None:
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            problems.append(f"{where}: expected an object, got {type(value).__name__}")
            return
        for key, sub in spec.items():
            optional = key.endswith("?")
            key = key.rstrip("?")
            if key not in value:
                if not optional:
                    problems.append(f"{where}.{key}: missing")
                continue
            _check(value[key], sub, f"{where}.{key}", problems)
    elif isinstance(spec, list):
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _check(item, spec[0], f"{where}[{i}]", problems)
    elif isinstance(value, bool) and spec in (NUM, OPT_NUM, int):
        problems.append(f"{where}: expected a number, got a bool")
    elif not isinstance(value, spec):
        problems.append(f"{where}: expected {spec}, got {type(value).__name__}")


def validate(report: dict[str, Any]) -> None:
    """Raise `ConfigError` naming every field of `report` that breaks the schema."""
    from .suite import SCHEMA_VERSION

    problems: list[str] = []
    _check(report, SCHEMA, "report", problems)
    if not problems and report["schema"] != SCHEMA_VERSION:
        problems.append(f"report.schema: '{report['schema']}', this mmfuse reads '{SCHEMA_VERSION}'")
    for i, case in enumerate(report.get("cases", []) if not problems else []):
        if case["split"] is not None:
            _check(case["split"], SPLIT, f"report.cases[{i}].split", problems)
        for name, value in (case["mfu"] or {}).items():
            if name not in case["series"] or not isinstance(value, NUM):
                problems.append(f"report.cases[{i}].mfu.{name}: not a number of a series")
        for key in ("ratio", "cpu_ratio"):
            if case[key] is not None:
                _check(case[key], STAT, f"report.cases[{i}].{key}", problems)
    if problems:
        raise ConfigError("bench report does not match its schema: " + "; ".join(problems))
