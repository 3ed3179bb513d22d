"""The environment a report was measured in: CPU, ISA flags, GPU and driver, library versions, thread settings."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")
LIBRARIES = ("torch", "torchvision", "transformers", "timm", "webdataset", "numpy", "pillow", "tokenizers",
             "mmfuse")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_NUM_THREADS")


def _cpuinfo() -> dict[str, Any]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor() or platform.machine(), "flags": [], "physical_cores": None}
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    cores = {(p, c) for p, c in re.findall(r"^physical id\s*:\s*(\d+)\s*\n(?:.*\n)*?core id\s*:\s*(\d+)", text, re.M)}
    return {"model": model.group(1).strip() if model else platform.machine(),
            "flags": flags.group(1).split() if flags else [], "physical_cores": len(cores) or None}


def _gpu() -> dict[str, Any] | None:
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    driver = None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True)
        driver = out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    return {"name": props.name, "count": torch.cuda.device_count(), "memory_bytes": props.total_memory,
            "capability": f"{props.major}.{props.minor}", "driver": driver}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def capture_environment() -> dict[str, Any]:
    """Everything needed to judge where a report's numbers come from."""
    cpu = _cpuinfo()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": {"model": cpu["model"], "logical_cpus": os.cpu_count(), "usable_cpus": affinity,
                "physical_cores": cpu["physical_cores"], "machine": platform.machine(),
                "isa": {flag: flag in cpu["flags"] for flag in ISA_FLAGS}},
        "gpu": _gpu(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in LIBRARIES},
        "torch": {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available()
                  else None, "mkldnn": torch.backends.mkldnn.is_available(), "mkl": torch.backends.mkl.is_available(),
                  "cpu_capability": torch.backends.cpu.get_cpu_capability()},
        "threads": {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads(),
                    **{var: os.environ.get(var) for var in THREAD_VARIABLES}},
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "git_commit": _git_commit(),
    }


def environment_tag(env: dict[str, Any]) -> str:
    """A short, filesystem-safe name for the machine: `<cpu or gpu model>-<N>cpu[-<count>gpu]`."""
    gpu = env.get("gpu")
    name = gpu["name"] if gpu else env["cpu"]["model"]
    slug = re.sub(r"[^a-z0-9]+", "-", re.sub(r"\(r\)|\(tm\)|cpu|processor|@.*", "", name.lower())).strip("-")
    tag = f"{slug or 'unknown'}-{env['cpu']['usable_cpus']}cpu"
    return f"{tag}-{gpu['count']}gpu" if gpu else tag
