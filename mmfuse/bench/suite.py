"""`run_suite(BenchConfig)`: calibrate the matmul peak, run the cases, calibrate again, derive MFU and flags."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import torch

from ..data.demo import demo_dataset
from ..data.info import DatasetInfo
from ..precision import DTYPES, choose_precision, resolve_device
from .cases import RUNNERS
from .common import Context
from .env import capture_environment, environment_tag
from .levers import run_lever
from .presets import BenchConfig, build_cases
from .timing import matmul_peak

SCHEMA_VERSION = "mmfuse-bench/1"
DRIFT_LIMIT = 0.15
"""Relative change of the calibration matmul between before and after the cases beyond which a report is flagged."""
NOISE_LIMIT = 0.10
"""Relative IQR of a series beyond which its median is flagged as noisy."""


def calibration_size(device: torch.device, tiny: bool) -> int:
    """Side of the square calibration matmul: 256 for the tiny preset, 2048 on a CPU, 8192 on a GPU (where a
    2048^2 matmul is too short to reach the tensor cores' sustained rate)."""
    if tiny:
        return 256
    return 8192 if device.type == "cuda" else 2048


def calibrate(device: torch.device, precision: str, tiny: bool) -> float:
    """FLOP/s of a large matmul in the run's dtype (a small, short one for the tiny preset)."""
    dtype = DTYPES[precision] or torch.float32
    return matmul_peak(device, dtype, size=calibration_size(device, tiny), min_time=0.05 if tiny else 1.0)


def _flags(report: dict[str, Any]) -> list[str]:
    flags = []
    cal = report["calibration"]
    if cal["drift"] > DRIFT_LIMIT:
        flags.append(f"calibration drift {cal['drift']:.0%} > {DRIFT_LIMIT:.0%}: the machine's speed changed during "
                     f"the run (before {cal['before_flops'] / 1e9:.0f}, after {cal['after_flops'] / 1e9:.0f} "
                     f"GFLOP/s); absolute figures and MFU are unreliable, same-run ratios less so")
    env = report["environment"]
    load = env.get("load_average_before") or [0.0]
    if load[0] > 0.5:
        flags.append(f"machine not idle at start: 1-min load average {load[0]:.1f} on {env['cpu']['usable_cpus']} "
                     f"CPUs (shared)")
    for case in report["cases"]:
        for name, series in case["series"].items():
            if series["iqr_rel"] > NOISE_LIMIT:
                flags.append(f"{case['name']} {name}: IQR {series['iqr_rel']:.0%} of the median (noisy)")
    return flags


def _mfu(report: dict[str, Any]) -> None:
    peak = report["calibration"]["peak_flops"]
    for case in report["cases"]:
        if case["flops_per_sample"] and peak:
            case["mfu"] = {name: case["flops_per_sample"] * s["median"] / peak for name, s in case["series"].items()}


def run_suite(cfg: BenchConfig, echo: Callable[[str], Any] = print, argv: list[str] | None = None) -> dict[str, Any]:
    """Run the configured cases; returns the report (schema `SCHEMA_VERSION`, see `report.validate`)."""
    started = time.perf_counter()
    env = capture_environment()
    env["load_average_before"] = env.pop("load_average")
    device = resolve_device(cfg.device)
    precision = choose_precision(device, cfg.precision)
    info = DatasetInfo.load(cfg.data or demo_dataset())
    ctx = Context(cfg, device, precision, info)
    cases = build_cases(cfg)
    tiny = cfg.preset == "tiny"
    echo(f"mmfuse bench: {len(cases)} cases on {device} {precision}, {cfg.repeats} repeats, "
         f"{torch.get_num_threads()} threads, data {info.root}")
    before = calibrate(device, precision, tiny)
    echo(f"  calibration before: {before / 1e9:.1f} GFLOP/s")
    results = []
    for spec in cases:
        tick = time.perf_counter()
        result = {**RUNNERS, "lever": run_lever}[spec.kind](ctx, spec)
        result["seconds"] = round(time.perf_counter() - tick, 2)
        results.append(result)
        ratio = (f"  ratio {result['ratio']['median']:.3f} (CPU time {result['cpu_ratio']['median']:.3f})"
                 if result["ratio"] else "")
        echo(f"  {spec.name}: {result['series']['mmfuse']['median']:.1f} samples/s{ratio}  ({result['seconds']} s)")
    after = calibrate(device, precision, tiny)
    echo(f"  calibration after: {after / 1e9:.1f} GFLOP/s")
    env["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report = {
        "schema": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tag": environment_tag(env),
        "command": list(argv if argv is not None else sys.argv),
        "settings": {"preset": cfg.preset, "device": str(device), "precision": precision, "compile": cfg.compile,
                     "workers": cfg.workers, "repeats": cfg.repeats, "warmup": cfg.warmup, "min_time": cfg.min_time,
                     "data": str(info.root), "split": ctx.split},
        "environment": env,
        "calibration": {"op": "matmul", "dtype": str(DTYPES[precision] or torch.float32).replace("torch.", ""),
                        "size": calibration_size(device, tiny), "before_flops": before, "after_flops": after,
                        "peak_flops": max(before, after), "drift": abs(after - before) / max(before, after)},
        "cases": results,
        "duration_s": round(time.perf_counter() - started, 1),
    }
    _mfu(report)
    report["flags"] = _flags(report)
    return report
