"""Cached epochs with frozen towers: each epoch's wall time against its compute and data time, and the bytes written.

    python benchmarks/cached_epochs.py                        # MiniLM- + EfficientNet-Lite0-shaped towers, 6 epochs
    python benchmarks/cached_epochs.py --epochs 10 --count 2100 --out /tmp/cached-bench
    python benchmarks/cached_epochs.py --path tar             # the webdataset replay instead of the in-memory loader
    python benchmarks/cached_epochs.py --profile /tmp/cached.prof   # cProfile of the measured run (see pstats)

Builds a demo dataset (text + image, 128 px) and runs `finetune` in this process with both towers frozen
(random init: nothing downloads) and `train.cache_dir` set: a one-epoch warm-up run encodes the splits once and
writes their features, the measured run reads them back, so its epochs are cached epochs only. Per epoch it reports
the wall time between two epoch lines (training, evaluation and checkpoints), the `data_s` and `compute_s` of
metrics.jsonl, and the bytes the process wrote (`/proc/self/io` wchar, Linux only). The last line is the medians
over the epochs after the first. Absolute seconds depend on the machine: compare wall against compute_s, and two
commits on the same idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import statistics
import time
from pathlib import Path
from typing import Any

TOWERS = {
    "text": {"name": "tiny-text", "kwargs": {"width": 384, "layers": 6, "heads": 12, "max_length": 128},
             "pretrained": False},  # all-MiniLM-L6-v2's shape over the packaged vocabulary
    "image": {"name": "timm-image", "kwargs": {"model": "tf_efficientnet_lite0", "image_size": 128},
              "pretrained": False},
}


def written_bytes() -> int:
    """Bytes this process has written so far (write syscalls), or -1 where /proc/self/io is absent."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return -1


def run_config(args: argparse.Namespace, data: Path, out: Path, epochs: int) -> Any:
    from mmfuse.config import resolve

    return resolve({
        "model": {"modalities": ["text", "image"], "fusion": args.fusion, "dim": 256, "encoders": TOWERS},
        "data": {"path": str(data), "batch_size": args.batch_size, "num_workers": args.workers},
        "train": {"epochs": epochs, "freeze": ["text", "image"], "progress": False, "precision": "fp32",
                  "cache_dir": str(args.out / "features"), "seed": 0},
        "out": str(out),
    })


def measured_run(args: argparse.Namespace, data: Path) -> list[dict[str, Any]]:
    """The run whose epochs are timed: one row per epoch (wall_s, data_s, compute_s, written_mb)."""
    from mmfuse.finetune import finetune

    marks: list[tuple[float, int]] = []

    def echo(line: str) -> None:
        if line.startswith("epoch ") or line.startswith("mmfuse: fine-tuning"):
            marks.append((time.perf_counter(), written_bytes()))
        if args.verbose:
            print(line)

    config = run_config(args, data, args.out / "run", args.epochs)
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    summary = finetune(config, echo=echo, overwrite=True)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    rows = []
    for (t0, w0), (t1, w1), record in zip(marks, marks[1:], summary["epochs"], strict=False):
        rows.append({"epoch": record["epoch"], "wall_s": t1 - t0, "data_s": record["data_s"],
                     "compute_s": record["compute_s"], "written_mb": (w1 - w0) / 2**20 if w0 >= 0 else None})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/mmfuse-cached-epochs"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--count", type=int, default=2100, help="samples in all (80%% train, 10%% val, 10%% test)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--fusion", default="gated")
    parser.add_argument("--workers", type=int, default=0, help="data.num_workers (the replay's loader processes)")
    parser.add_argument("--path", choices=("memory", "tar"), default="memory",
                        help="serve fully cached splits from memory (the default) or replay the webdataset pipeline")
    parser.add_argument("--profile", default=None, help="write a cProfile of the measured run here")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()

    from mmfuse.data.demo import DemoSpec, build_demo
    from mmfuse.finetune import finetune
    from mmfuse.train import feature_cache

    if hasattr(feature_cache.FeatureCache, "in_memory"):  # absent before the in-memory loader
        feature_cache.FeatureCache.in_memory = args.path == "memory"
    elif args.path == "memory":
        print("note: this mmfuse has no in-memory loader; measuring the webdataset replay")
    val = test = args.count // 10
    data = args.out / "data"
    if not (data / "dataset.json").exists():
        build_demo(data, DemoSpec(train=args.count - val - test, val=val, test=test, image_size=128,
                                  shard_size=250))
    finetune(run_config(args, data, args.out / "warm-up", 1), echo=lambda *_: None, overwrite=True)
    rows = measured_run(args, data)
    print(f"{'epoch':>5} {'wall_s':>8} {'data_s':>8} {'compute_s':>9} {'wall/compute':>12} {'written_MB':>10}")
    for r in rows:
        mb = f"{r['written_mb']:10.1f}" if r["written_mb"] is not None else f"{'-':>10}"
        print(f"{r['epoch']:5d} {r['wall_s']:8.2f} {r['data_s']:8.2f} {r['compute_s']:9.2f} "
              f"{r['wall_s'] / max(r['compute_s'], 1e-9):12.2f} {mb}")
    later = rows[1:] or rows
    median = {k: statistics.median(r[k] for r in later) for k in ("wall_s", "data_s", "compute_s")}
    print(json.dumps({"path": args.path, "epochs": len(rows), "median_after_first": median,
                      "written_mb_median": statistics.median(r["written_mb"] or 0 for r in later)}))


if __name__ == "__main__":
    main()
