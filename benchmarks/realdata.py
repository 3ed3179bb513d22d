"""A real-data task for the recipe benchmark: does this caption name the handwritten digit in this scan?

    PYTHONPATH=. python benchmarks/realdata.py --out /tmp/digit-match [--seed 0] [--limit N]

Images: the 1,797 real handwritten digits of `sklearn.datasets.load_digits` (8x8 scans of 16 grey levels, shipped
inside scikit-learn: nothing downloads), saved as 64 px PNGs (bilinear upscaling, dark ink on white).
Captions: English phrases naming a number, from varied templates: words ("a handwritten seven"), numerals
("the number 7") and simple arithmetic ("three plus four", "one less than eight", "half of fourteen").
Label: `match` when the caption names the scan's digit, `no-match` when it names another digit (drawn uniformly
from the other nine). Every image gets one caption of each, so labels are balanced 50/50 in every split, and
neither modality alone says anything about the label: the task needs both.

Split by image (an image is never in two splits), seeded: 1,050 train images (2,100 train pairs), the remaining
747 halved into val and test. The manifest (`manifest/items.jsonl` + `manifest/media/`) is sharded with
`mmfuse.data.shard.write_shards` into `shards/`, which `build_digit_match` returns.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mmfuse.data.manifest import ShardConfig
from mmfuse.data.shard import write_shards
from mmfuse.errors import ConfigError

LABELS = ("match", "no-match")
TRAIN_IMAGES = 1050
"""Images in the train split (two pairs each: 2,100 train pairs); val and test share the rest."""
IMAGE_SIZE = 64
VERSION = 1

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen")
FRAMES = ("{}", "a handwritten {}", "the digit {}", "this scan shows {}", "someone wrote {}", "it reads {}",
          "a picture of {}", "the answer is {}")


def number_phrase(n: int, rng: np.random.Generator) -> str:
    """An English phrase whose value is `n` (0-9): a word, a numeral or a little sum, in a random template."""
    forms = ["word", "numeral", "plus", "minus", "less", "more", "half"]
    if n % 2 == 0 and n > 0:
        forms.append("twice")
    form = forms[rng.integers(len(forms))]
    if form == "word":
        return WORDS[n]
    if form == "numeral":
        return f"the number {n}"
    if form == "plus":
        a = int(rng.integers(n + 1))
        return f"{WORDS[a]} plus {WORDS[n - a]}"
    if form == "minus":
        b = int(rng.integers(10 - n))
        return f"{WORDS[n + b]} minus {WORDS[b]}"
    if form == "less":
        return f"one less than {WORDS[n + 1]}"
    if form == "more":
        return f"one more than {WORDS[n - 1]}" if n > 0 else "one less than one"
    if form == "half":
        return f"half of {WORDS[2 * n]}"
    return f"twice {WORDS[n // 2]}"


def caption(n: int, rng: np.random.Generator) -> str:
    """A caption naming digit `n`."""
    return FRAMES[rng.integers(len(FRAMES))].format(number_phrase(n, rng))


def split_images(count: int, seed: int, train: int = TRAIN_IMAGES) -> dict[str, np.ndarray]:
    """Image indices per split (disjoint, seeded). With fewer than all images, train keeps its share."""
    order = np.random.default_rng(seed).permutation(count)
    n_train = min(train, round(count * TRAIN_IMAGES / 1797))
    n_val = (count - n_train) // 2
    return {"train": np.sort(order[:n_train]), "val": np.sort(order[n_train:n_train + n_val]),
            "test": np.sort(order[n_train + n_val:])}


def _save_png(scan: np.ndarray, path: Path) -> None:
    """(8, 8) grey levels 0-16 (ink) -> a 64x64 RGB PNG, dark ink on white."""
    from PIL import Image

    grey = (255 - scan * (255 / 16)).clip(0, 255).astype(np.uint8)
    Image.fromarray(grey, mode="L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR).convert("RGB").save(path)


def write_manifest(out_dir: str | Path, seed: int = 0, limit: int | None = None) -> Path:
    """Write `manifest/items.jsonl` and `manifest/media/*.png` under `out_dir`; return the manifest file.

    Columns: key, caption, image, label (match / no-match), split, digit (the scan's), named (the caption's), image_id.
    `limit`: use only the first `limit` images of the seeded order (tests).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    count = len(digits.images) if limit is None else min(limit, len(digits.images))
    if count < 3:
        raise ConfigError(f"realdata: limit must be at least 3 images, got {limit}")
    chosen = np.random.default_rng(seed).permutation(len(digits.images))[:count]
    root = Path(out_dir) / "manifest"
    (root / "media").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 1])
    rows = []
    for split, positions in split_images(count, seed).items():
        for image_id in chosen[positions]:
            digit = int(digits.target[image_id])
            image = f"media/digit-{image_id:04d}.png"
            _save_png(digits.images[image_id], root / image)
            other = int((digit + rng.integers(1, 10)) % 10)
            for label, named in (("match", digit), ("no-match", other)):
                rows.append({"key": f"digit-{image_id:04d}-{label}", "caption": caption(named, rng), "image": image,
                             "label": label, "split": split, "digit": digit, "named": named,
                             "image_id": int(image_id)})
    manifest = root / "items.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest


def build_digit_match(out_dir: str | Path, seed: int = 0, limit: int | None = None) -> Path:
    """Write the manifest and shard it; return the shard directory (`out_dir/shards`, holding `dataset.json`).

    A directory built earlier with the same seed and limit is reused (`out_dir/realdata.json` records them).
    """
    out_dir = Path(out_dir)
    stamp = {"version": VERSION, "seed": seed, "limit": limit}
    shards = out_dir / "shards"
    if shards.exists():
        earlier = json.loads((out_dir / "realdata.json").read_text()) if (out_dir / "realdata.json").exists() else None
        if earlier == stamp and (shards / "dataset.json").exists():
            return shards
        raise ConfigError(f"realdata: {shards} holds another build ({earlier}); choose another --out")
    manifest = write_manifest(out_dir, seed, limit)
    report = write_shards(ShardConfig(manifest=str(manifest), out=str(shards), text=["caption"], image="image",
                                      audio=None, split="split", labels=list(LABELS), shard_size=500, progress=False))
    if report.rejected:
        raise RuntimeError(f"realdata: {report.rejected} rows refused, see {shards / 'rejects.jsonl'}")
    (out_dir / "realdata.json").write_text(json.dumps(stamp))
    return shards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory (manifest/ and shards/ go inside)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="use only this many images")
    args = parser.parse_args(argv)
    print(build_digit_match(args.out, args.seed, args.limit))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
