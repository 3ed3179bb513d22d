"""Loader throughput: `make_loader` (the webdataset pipeline) against a raw decode loop over the same shards.

    python benchmarks/loader_throughput.py --repeats 5

The raw loop is the floor of what any loader must do: read each tar member with `tarfile`, run the same
preprocessors (`transform` per sample, `collate` per batch) in one process. The pipeline adds the webdataset stages
(shard list, tar parsing into samples, decode with counted skips, batching). Runs are interleaved (raw, loader, raw,
...) on the demo shards (text + 64 px JPEG images), 0 loader workers, and the medians are compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

from mmfuse.data.demo import DemoSpec, build_demo
from mmfuse.data.info import DatasetInfo
from mmfuse.data.loader import make_loader
from mmfuse.encoders import create_encoder


def raw_loop(urls: list[str], preprocessors: dict, batch_size: int) -> int:
    """Read members with tarfile, transform and collate in batches. Returns the number of samples."""
    seen, pending = 0, []
    for url in urls:
        with tarfile.open(url) as tar:
            sample: dict[str, bytes] = {}
            for member in tar:
                key, ext = member.name.split(".", 1)
                if sample and sample["__key__"] != key:
                    pending.append(sample)
                    sample = {}
                sample["__key__"] = key
                sample[ext] = tar.extractfile(member).read()
            pending.append(sample)
            while len(pending) >= batch_size or (pending and url == urls[-1]):
                chunk, pending = pending[:batch_size], pending[batch_size:]
                values = {"text": [preprocessors["text"].transform(s.get("txt")) for s in chunk],
                          "image": [preprocessors["image"].transform(s.get("jpg")) for s in chunk]}
                for m, pre in preprocessors.items():
                    pre.collate(values[m])
                seen += len(chunk)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    preprocessors = {"text": create_encoder("tiny-text").preprocessor,
                     "image": create_encoder("tiny-image", image_size=64).preprocessor}
    with tempfile.TemporaryDirectory() as tmp:
        info = DatasetInfo.load(build_demo(Path(tmp) / "demo", DemoSpec(train=args.train, val=10, test=10)))
        urls = info.shard_urls("train")
        raw, loader = [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            assert raw_loop(urls, preprocessors, args.batch_size) == args.train
            raw.append(time.perf_counter() - started)
            started = time.perf_counter()
            assert sum(len(b["key"]) for b in make_loader(info, "train", preprocessors, args.batch_size)) == args.train
            loader.append(time.perf_counter() - started)
    raw_rate, loader_rate = args.train / statistics.median(raw), args.train / statistics.median(loader)
    print(json.dumps({"samples": args.train, "repeats": args.repeats, "raw_samples_per_s": round(raw_rate),
                      "loader_samples_per_s": round(loader_rate), "loader_over_raw": round(loader_rate / raw_rate, 3)},
                     indent=2))


if __name__ == "__main__":
    main()
