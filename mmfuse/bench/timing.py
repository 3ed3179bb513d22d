"""Measurement: synchronised timers, interleaved repeats, robust statistics, FLOP counting, matmul peak, memory.

The rules follow timm's `benchmark.py` and MLPerf: warm-up is never counted, CUDA work is synchronised before a
clock is read, every figure is the median of several repeats with its inter-quartile range, and a baseline is
timed in the same process, interleaved with the code under test (ABBA order) so drift hits both.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

Workload = Callable[[], int]
"""A timed unit of work: runs some steps and returns how many samples it processed."""


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (CUDA kernels run asynchronously); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(work: Workload, device: torch.device) -> tuple[float, float, int]:
    """Wall seconds, process CPU seconds and samples of one call of `work`, the device synchronised on both sides.

    CPU seconds count only this process's threads, so on a shared machine they are far less disturbed by other
    processes than wall time (but they include OpenMP spin-waits).
    """
    synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    samples = work()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu_start, samples


def summarize(values: list[float]) -> dict[str, Any]:
    """Median, quartiles and relative IQR of repeated measurements (`values` kept for re-analysis)."""
    if not values:
        raise ValueError("no measurements to summarise")
    if len(values) == 1:
        q1 = median = q3 = values[0]
    else:
        q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": median, "q1": q1, "q3": q3, "iqr_rel": (q3 - q1) / median if median else 0.0,
            "values": [float(v) for v in values]}


def interleaved(workloads: dict[str, Workload], device: torch.device, repeats: int, warmup: int = 1,
                group: int = 1) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Throughput of each workload per repeat, calls alternating in ABBA order after `warmup` calls each.

    A repeat is `group` calls of every workload, interleaved call by call (A B B A A B ...), so its workloads ran
    under the same machine conditions; its rate is samples / seconds summed over its calls.
    Returns: ({name: [samples per wall second of repeat 0, 1, ...]}, {name: [samples per CPU second, ...]}).
    """
    names = list(workloads)
    for _ in range(warmup):
        for name in names:
            timed(workloads[name], device)
    totals = {name: [[0.0, 0.0, 0] for _ in range(repeats)] for name in names}
    for call in range(repeats * group):
        for name in names if call % 2 == 0 else reversed(names):
            seconds, cpu_seconds, samples = timed(workloads[name], device)
            total = totals[name][call // group]
            total[0], total[1], total[2] = total[0] + seconds, total[1] + cpu_seconds, total[2] + samples
    rates = {name: [t[2] / t[0] for t in totals[name]] for name in names}
    cpu_rates = {name: [t[2] / max(t[1], 1e-9) for t in totals[name]] for name in names}
    return rates, cpu_rates


def paired_ratio(numerator: list[float], denominator: list[float]) -> dict[str, Any]:
    """Median and quartiles of the per-repeat ratios `numerator[i] / denominator[i]`."""
    return summarize([a / b for a, b in zip(numerator, denominator, strict=True)])


def _sdpa_cpu_forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _sdpa_cpu_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def _flop_mapping() -> dict[Any, Any]:
    """FLOP formulas FlopCounterMode lacks: the CPU flash-attention kernels SDPA dispatches to (torch <= 2.14)."""
    aten = torch.ops.aten
    mapping = {}
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", _sdpa_cpu_forward),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward", _sdpa_cpu_backward)):
        if hasattr(aten, name):
            mapping[getattr(aten, name)] = formula  # keyed by overload packet
    return mapping


def count_flops(work: Callable[[], Any]) -> int:
    """Model FLOPs of one call of `work` (matmuls, convolutions, attention; forward and backward as run)."""
    with FlopCounterMode(display=False, custom_mapping=_flop_mapping()) as counter:
        work()
    return int(counter.get_total_flops())


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 2048,
                min_time: float = 1.0) -> float:
    """FLOP/s of a large square matmul in `dtype`: the achievable peak that MFU is measured against."""
    from torch.utils.benchmark import Timer

    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    timer = Timer("torch.matmul(a, b)", globals={"a": a, "b": b, "torch": torch},
                  num_threads=torch.get_num_threads())
    seconds = timer.blocked_autorange(min_run_time=min_time).median  # Timer synchronises CUDA itself
    return 2 * size**3 / seconds


class PeakMemory:
    """Peak memory of a block: CUDA max allocated, or the process's peak RSS (reset per block where Linux allows)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss"
        self.reset_ok = False

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:  # writing 5 to clear_refs resets VmHWM (Linux >= 4.0), so the peak is this block's
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self.reset_ok = True
            except OSError:
                self.kind = "process_max_rss_since_start"
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bytes = self.read()

    def read(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        if self.reset_ok:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
