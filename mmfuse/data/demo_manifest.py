"""The demo catalogue as a *manifest* (items.jsonl + media files), the input `mmfuse shard` expects.

Items are drawn like the demo shards' (`mmfuse.data.demo`): images alternate JPEG / PNG, audio alternates WAV /
FLAC, some items have no audio. Besides the class `label`, each row has `tags` (a multilabel target: its shape
and its material, as a list) and `price` (a regression target: a base price per shape plus a premium for metal
plus noise; like the label, only text + image know it). With `faults=True` a handful of known-bad rows are appended
(missing image file, truncated JPEG, corrupt WAV, empty text, unknown label, duplicate key, WAV cut short behind a
valid header, silent clip), one of each, keys starting with `bad-` (the duplicate reuses the first item's key).
With `users > 0`, `pairs.csv` (user,item) beside the manifest holds the demo users' interactions
(`mmfuse.data.demo_users`), the input of `mmfuse shard --interactions`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from ..errors import ConfigError, OutputError
from ..outputs import check_output_dir
from .demo import _draw_image, _tap_audio, _write_text
from .demo_labels import LABELS, MATERIALS, SHAPES

FAULTS = {  # key -> (field, reason prefix) that `mmfuse shard` reports for it
    "bad-missing-image": ("image", "missing file"),
    "bad-truncated-jpeg": ("image", "unreadable or truncated JPEG image"),
    "bad-corrupt-wav": ("audio", "unreadable audio"),
    "bad-empty-text": ("title", "empty text"),
    "bad-unknown-label": ("label", "unknown label"),
    "item-000000": ("key", "duplicate key"),
    "bad-truncated-wav": ("audio", "truncated WAV audio"),
    "bad-silent-audio": ("audio", "silent audio"),
}


def _save_image(img: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(img).save(path, quality=90) if path.suffix == ".jpg" else Image.fromarray(img).save(path)


def _save_audio(wave: np.ndarray, path: Path) -> None:
    import soundfile as sf

    sf.write(path, wave, 16_000, format=path.suffix[1:].upper())


PRICE_BASE = {"circle": 10.0, "square": 20.0, "triangle": 30.0}
PRICE_METAL = 15.0
PRICE_NOISE = 1.0


def write_demo_manifest(out: str | Path, count: int = 200, *, seed: int = 0, image_size: int = 32,
                        audio_missing: float = 0.1, faults: bool = False, users: int = 0,
                        users_per_item: float = 4.0, interaction_noise: float = 0.1) -> Path:
    """Write `out/items.jsonl` and `out/media/*` for `count` demo items (+ the known faults), and with `users`
    `out/pairs.csv`. Returns the manifest."""
    for name, value, ok, rule in (("count", count, count >= 1, ">= 1"), ("users", users, users >= 0, ">= 0"),
                                  ("seed", seed, 0 <= seed < 2**32, "in [0, 2**32)")):
        if not ok:
            raise ConfigError(f"demo catalogue: {name} must be {rule}, got {value}")
    out = check_output_dir(out, flag="--manifest")
    if (out / "items.jsonl").exists():
        raise OutputError(f"--manifest {out} already holds a catalogue ({out / 'items.jsonl'}): choose another "
                          f"directory or remove it")
    (out / "media").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    noise = np.random.default_rng([seed, 1])  # its own stream: the other columns stay as they were
    rows = []
    for i in range(count):
        shape, material = SHAPES[rng.integers(len(SHAPES))], list(MATERIALS)[rng.integers(len(MATERIALS))]
        key = f"item-{i:06d}"
        image = Path("media") / f"{key}.{'jpg' if i % 2 == 0 else 'png'}"
        _save_image(_draw_image(rng, shape, image_size), out / image)
        row = {"key": key, "title": _write_text(rng, material), "image": str(image),
               "label": f"{shape}-{material}", "tags": [shape, material],
               "price": round(PRICE_BASE[shape] + PRICE_METAL * (material == "metal") + noise.normal(0, PRICE_NOISE),
                              2)}
        wave = _tap_audio(rng, material)
        if rng.random() >= audio_missing:
            audio = Path("media") / f"{key}.{'wav' if i % 3 else 'flac'}"
            _save_audio(wave, out / audio)
            row["audio"] = str(audio)
        rows.append(row)
    if users:
        _write_pairs(out / "pairs.csv", rows, seed, users, users_per_item, interaction_noise)
    if faults:
        rows += _fault_rows(out, rows[0], rng, image_size)
    manifest = out / "items.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def _write_pairs(path: Path, rows: list[dict], seed: int, users: int, per_item: float, noise: float) -> None:
    from .demo_users import UserDraw, user_name

    draw = UserDraw(seed, 0, users, per_item, noise)
    lines = ["user,item\n"]
    for row in rows:
        lines += [f"{user_name(u)},{row['key']}\n" for u in draw.draw(LABELS.index(row["label"]))]
    path.write_text("".join(lines))


def _fault_rows(out: Path, first: dict, rng: np.random.Generator, image_size: int) -> list[dict]:
    buf = io.BytesIO()
    from PIL import Image

    Image.fromarray(_draw_image(rng, "circle", image_size)).save(buf, format="JPEG")
    (out / "media" / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (out / "media" / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(40)))
    wav = out / "media" / "truncated.wav"
    _save_audio(_tap_audio(rng, "wood"), wav)
    wav.write_bytes(wav.read_bytes()[: wav.stat().st_size // 2])  # the header still declares the full length
    _save_audio(np.zeros(8000, dtype=np.float32), out / "media" / "silent.wav")
    good = {"image": first["image"], "label": LABELS[0]}
    return [
        {"key": "bad-missing-image", "title": "an oak toy", **good, "image": "media/nowhere.jpg"},
        {"key": "bad-truncated-jpeg", "title": "an oak toy", **good, "image": "media/truncated.jpg"},
        {"key": "bad-corrupt-wav", "title": "an oak toy", **good, "audio": "media/corrupt.wav"},
        {"key": "bad-empty-text", "title": "  ", **good},
        {"key": "bad-unknown-label", "title": "an oak toy", **good, "label": "hexagon-glass"},
        {"key": "item-000000", "title": "a second row with the first row's key", **good},
        {"key": "bad-truncated-wav", "title": "an oak toy", **good, "audio": "media/truncated.wav"},
        {"key": "bad-silent-audio", "title": "an oak toy", **good, "audio": "media/silent.wav"},
    ]
