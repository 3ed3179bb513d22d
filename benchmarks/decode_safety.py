"""The cost of safe image decoding on the loader's hot path: `mmfuse bench`'s loader cases, decoder swapped.

Runs the default preset's loader cases (demo data: 64 px JPEG, text + image [+ audio]) in one process, each full
pass over the split with one of three image decoders, interleaved ABC...CBA per repeat:

    torchvision  `torchvision.io.decode_image` on every format (before: libpng segfaults on a corrupt PNG)
    mmfuse       `mmfuse.encoders.image_io.decode_image` (PIL header + pixel limit; JPEG by torchvision, others PIL)
    pil          PIL for every format (what `mmfuse` would be with no torchvision JPEG path)

and prints samples/s (wall and process CPU time) with the ratios to `torchvision`. Then a micro benchmark of
`Image.draft()` (JPEG decoded at 1/2..1/8 scale) against a full decode, when downscaling to 224 px.

    PYTHONPATH=. python benchmarks/decode_safety.py --repeats 7
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F


def torchvision_decode(value):
    from torchvision.io import ImageReadMode, decode_image

    return decode_image(torch.frombuffer(bytearray(value), dtype=torch.uint8), mode=ImageReadMode.RGB)


def pil_decode(value):
    from PIL import Image

    with Image.open(io.BytesIO(bytes(value))) as image:
        image.load()
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)


def loader_cost(repeats: int) -> None:
    import mmfuse.encoders.timm_image as timm_image
    from mmfuse.bench.common import Context, case_model
    from mmfuse.bench.presets import BenchConfig, build_cases
    from mmfuse.data.batch import batch_size as count
    from mmfuse.data.demo import demo_dataset
    from mmfuse.data.info import DatasetInfo
    from mmfuse.data.loader import make_loader
    from mmfuse.encoders.image_io import decode_image

    cfg = BenchConfig()
    info = DatasetInfo.load(demo_dataset())
    ctx = Context(cfg, torch.device("cpu"), "fp32", info)
    variants = {"torchvision": torchvision_decode, "mmfuse": decode_image, "pil": pil_decode}
    for spec in [c for c in build_cases(cfg) if c.kind == "loader"]:
        preprocessors = case_model(ctx, spec).preprocessors()
        split = spec.split or ctx.split
        wall: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        passes = [list(variants) if r % 2 == 0 else list(reversed(variants)) for r in range(repeats)]
        for r, name in enumerate(["mmfuse"] + [name for order in passes for name in order]):
            timm_image.decode_image = variants[name]
            t, c = time.perf_counter(), time.process_time()
            n = sum(count(b) for b in make_loader(info, split, preprocessors, spec.batch_size))
            if r > 0:  # the first pass warms up
                wall[name].append(n / (time.perf_counter() - t))
                cpu[name].append(n / (time.process_time() - c))
        timm_image.decode_image = decode_image
        print(f"{spec.name} ({split}, {info.count(split)} samples, load average {os.getloadavg()[0]:.1f}):")
        for name in variants:
            ratio = statistics.median(a / b for a, b in zip(wall[name], wall["torchvision"], strict=True))
            cpu_ratio = statistics.median(a / b for a, b in zip(cpu[name], cpu["torchvision"], strict=True))
            print(f"  {name:12s} {statistics.median(wall[name]):8.0f} samples/s wall (x{ratio:.3f}), "
                  f"{statistics.median(cpu[name]):8.0f} per CPU-s (x{cpu_ratio:.3f})")


def _resized(data: bytes, draft: bool) -> torch.Tensor:
    """JPEG bytes -> (3, 224, 224) float: full torchvision decode, or PIL's DCT-scaled decode (`draft`)."""
    from PIL import Image

    if draft:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (224, 224))
            pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
    else:
        pixels = torchvision_decode(data)
    return F.interpolate(pixels.float()[None], size=(224, 224), mode="bilinear", antialias=True)[0]


def draft_cost(repeats: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for size in (512, 1024, 2048):
        pixels = np.clip(128 + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
        data = buf.getvalue()
        times: dict[str, list[float]] = {"full": [], "draft": []}
        n = max(2, 2000 // size)
        for r in range(repeats):
            for name in ("full", "draft") if r % 2 == 0 else ("draft", "full"):
                t = time.perf_counter()
                for _ in range(n):
                    _resized(data, name == "draft")
                times[name].append((time.perf_counter() - t) / n)
        diff = (_resized(data, False) - _resized(data, True)).abs().mean().item()
        ratio = statistics.median(a / b for a, b in zip(times["full"], times["draft"], strict=True))
        print(f"  {size}px JPEG -> 224: full decode {statistics.median(times['full']) * 1e3:.2f} ms, draft "
              f"{statistics.median(times['draft']) * 1e3:.2f} ms (x{ratio:.1f} faster; mean |diff| {diff:.1f}/255)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    loader_cost(args.repeats)
    print(f"Image.draft() (load average {os.getloadavg()[0]:.1f}):")
    draft_cost(args.repeats)
