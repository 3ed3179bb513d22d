"""Shard-writing throughput: `write_shards` on N demo-like manifest records, 1 vs 2 worker processes.

    python benchmarks/shard_write.py --items 2000 --repeats 3

Builds the manifest once (JPEG/PNG 64 px images, WAV/FLAC 0.5 s clips, 10% without audio) in a temporary directory,
then times the runs interleaved (1, 2, 1, 2, ...) and prints the median records/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from mmfuse.data.demo import LABELS
from mmfuse.data.demo_manifest import write_demo_manifest
from mmfuse.data.manifest import ShardConfig
from mmfuse.data.shard import write_shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    import torchvision.io  # noqa: F401 - import cost (seconds) kept out of the timings

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        manifest = write_demo_manifest(Path(tmp) / "catalogue", args.items, image_size=args.image_size)
        print(f"manifest of {args.items} items written in {time.perf_counter() - started:.1f}s")
        times: dict[int, list[float]] = {int(w): [] for w in args.workers.split(",")}
        for repeat in range(args.repeats):
            for workers in times:
                out = Path(tmp) / f"out-{workers}-{repeat}"
                started = time.perf_counter()
                report = write_shards(ShardConfig(manifest=str(manifest), out=str(out), text=["title"],
                                                  labels=list(LABELS), workers=workers, progress=False))
                times[workers].append(time.perf_counter() - started)
                assert sum(report.counts.values()) == args.items and report.rejected == 0
    result = {f"workers={w}": {"median_s": round(statistics.median(t), 2),
                               "records_per_s": round(args.items / statistics.median(t))} for w, t in times.items()}
    print(json.dumps({"items": args.items, "repeats": args.repeats, **result}, indent=2))


if __name__ == "__main__":
    main()
