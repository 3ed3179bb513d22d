"""The embedded demo dataset: a seeded catalogue of text + image + audio items whose label needs fusion.

Each item is a product of one of 3 *shapes* (only the image shows it) made of one of 2 *materials* (only the
text states it). The label is the pair, so there are 6 classes:

    text alone  -> knows the material, guesses the shape   -> ceiling 1/3
    image alone -> knows the shape, guesses the material    -> ceiling 1/2
    text+image  -> knows both                               -> ceiling 1.0

The audio clip is a "tap" whose pitch is a noisy copy of the material (flipped for 15% of items, absent for 10%),
so audio is redundant with text: a model that loses the text can fall back on it. Colours, sizes, positions,
adjectives and templates are random distractors shared by all classes.

`DemoSpec(caption_colour=True)` paints each shape in the colour its text names, so text and image share
something an item-level retrieval can find (the contrastive task's demo); by default the two colours are drawn
independently and text and image share nothing but the label's correlation.

`DemoSpec(interactions=True)` adds users who like one or two (shape, material) combinations
(`mmfuse.data.demo_users`): each item carries its users (`.usr`), `dataset.json` is an interactions dataset with
the user vocabulary, and `pairs.csv` (user,item) lists every pair (the interactions task's demo).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, OutputError
from ..outputs import atomic_dir, check_output_dir
from .demo_labels import LABELS, MATERIALS, SHAPES
from .demo_users import UserDraw, user_name
from .info import write_dataset_json
from .writer import write_split

COLOURS = {
    "red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 200), "yellow": (220, 200, 40),
    "purple": (140, 50, 170), "orange": (230, 130, 30), "teal": (30, 150, 150), "grey": (128, 128, 128),
}
ADJECTIVES = ("small", "large", "elegant", "simple", "sturdy", "classic", "modern", "handmade", "polished",
              "rustic", "compact", "durable", "vintage", "bright", "light", "heavy")
NOUNS = ("item", "piece", "object", "ornament", "decoration", "toy", "block", "token", "figure")
TEMPLATES = (
    "a {adj} {colour} {noun} made of {mat}",
    "this {noun} is {mat} and {adj}",
    "{mat} {noun} with a {colour} finish",
    "{adj} {noun} crafted from {mat}, painted {colour}",
    "the {colour} {noun} is {adj}; material: {mat}",
    "{colour} and {adj}, this {mat} {noun} suits any room",
)
AUDIO_RATE = 16_000
AUDIO_SECONDS = 0.5
AUDIO_PITCH = {"wood": (180.0, 320.0), "metal": (900.0, 1500.0)}  # Hz ranges


@dataclass(frozen=True)
class DemoSpec:
    """Sizes and noise of the demo dataset; the cache key is derived from it."""

    train: int = 3000
    val: int = 500
    test: int = 500
    image_size: int = 64
    shard_size: int = 500
    audio_flip: float = 0.15
    audio_missing: float = 0.10
    seed: int = 0
    version: int = 2
    caption_colour: bool = False
    """Paint the shape in the colour the text names (text and image then share the colour)."""
    interactions: bool = False
    """Add users and their user-item interactions (an interactions dataset, see the module doc)."""
    users: int = 100
    users_per_item: float = 4.0
    """Mean number of users per item (at least 1)."""
    interaction_noise: float = 0.1
    """Probability that one of an item's users is a random user instead of a fan of its combination."""

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"the demo's seed must be in [0, 2**32), got {self.seed}")
        if self.interactions and self.users < 1:
            raise ConfigError(f"the demo needs at least 1 user with interactions, got {self.users}")

    def cache_name(self) -> str:
        name = f"demo-v{self.version}-s{self.seed}-{self.train}-{self.val}-{self.test}-{self.image_size}px"
        if self.interactions:
            name += f"-users{self.users}x{self.users_per_item:g}n{self.interaction_noise:g}"
        return name + ("-captioned" if self.caption_colour else "")


def cache_dir() -> Path:
    """`$MMFUSE_CACHE`, else `$XDG_CACHE_HOME/mmfuse`, else `~/.cache/mmfuse`."""
    if "MMFUSE_CACHE" in os.environ:
        return Path(os.environ["MMFUSE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mmfuse"


def _draw_image(rng: np.random.Generator, shape: str, size: int, colour_name: str | None = None) -> np.ndarray:
    """A noisy background with one filled shape of random colour (or `colour_name`), size and position.
    Returns (H, W, 3) uint8."""
    background = rng.integers(170, 256, size=3)  # a light tint; shapes are saturated and darker
    img = np.clip(background + rng.normal(0, 8, size=(size, size, 3)), 0, 255)
    names = list(COLOURS)
    drawn = names[rng.integers(len(names))]  # drawn even when given: the rest of the stream stays the same
    colour = np.array(COLOURS[colour_name or drawn], dtype=np.float64) * 0.8
    radius = rng.uniform(0.22, 0.36) * size
    cy, cx = rng.uniform(radius + 1, size - radius - 1, size=2)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        inside = dy**2 + dx**2 <= radius**2
    elif shape == "square":
        inside = (np.abs(dx) <= radius * 0.85) & (np.abs(dy) <= radius * 0.85)
    else:  # an upright triangle
        inside = (dy <= radius * 0.7) & (2 * np.abs(dx) <= (dy + radius) * 1.1)
    img[inside] = colour + rng.normal(0, 6, size=(int(inside.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_text(rng: np.random.Generator, material: str, with_colour: bool = False) -> Any:
    """A product description naming the material (and a random colour). With `with_colour`: (text, colour)."""
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    synonyms = MATERIALS[material]
    adjective, colour = ADJECTIVES[rng.integers(len(ADJECTIVES))], list(COLOURS)[rng.integers(len(COLOURS))]
    text = template.format(adj=adjective, colour=colour, noun=NOUNS[rng.integers(len(NOUNS))],
                           mat=synonyms[rng.integers(len(synonyms))])
    return (text, colour) if with_colour else text


def _tap_audio(rng: np.random.Generator, material: str) -> np.ndarray:
    """A decaying tone (the pitch range tells the material) in noise. Returns (samples,) float32 in [-1, 1]."""
    low, high = AUDIO_PITCH[material]
    t = np.arange(int(AUDIO_RATE * AUDIO_SECONDS)) / AUDIO_RATE
    onset = rng.uniform(0.0, 0.15)
    envelope = np.where(t >= onset, np.exp(-(t - onset) * rng.uniform(6, 14)), 0.0)
    tone = np.sin(2 * np.pi * rng.uniform(low, high) * t + rng.uniform(0, 2 * np.pi)) * envelope
    return (0.6 * tone + rng.normal(0, 0.02, size=t.shape)).clip(-1, 1).astype(np.float32)


def _encode_jpeg(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _encode_flac(wave: np.ndarray) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wave, AUDIO_RATE, format="FLAC")
    return buf.getvalue()


def make_samples(spec: DemoSpec, split: str, count: int, offset: int):
    """Yield `count` webdataset samples of `split` (dicts of member extension -> bytes/str)."""
    rng = np.random.default_rng([spec.seed, offset])
    materials = list(MATERIALS)
    users = None
    if spec.interactions:
        users = UserDraw(spec.seed, offset, spec.users, spec.users_per_item, spec.interaction_noise)
    for i in range(count):
        shape = SHAPES[rng.integers(len(SHAPES))]
        material = materials[rng.integers(len(materials))]
        text, colour = _write_text(rng, material, with_colour=True)
        sample = {
            "__key__": f"{split}-{offset + i:06d}",
            "txt": text,
            "jpg": _encode_jpeg(_draw_image(rng, shape, spec.image_size, colour if spec.caption_colour else None)),
            "cls": str(LABELS.index(f"{shape}-{material}")),
        }
        heard = material
        if rng.random() < spec.audio_flip:
            heard = materials[1 - materials.index(material)]
        wave = _tap_audio(rng, heard)
        if rng.random() >= spec.audio_missing:
            sample["flac"] = _encode_flac(wave)
        sample["json"] = json.dumps({"shape": shape, "material": material, "audio_material": heard}).encode()
        if users is not None:
            sample["usr"] = ",".join(map(str, users.draw(LABELS.index(f"{shape}-{material}"))))
        yield sample


def _recording_pairs(samples, pairs: list[str]):
    """Pass samples through, noting each (user, item) pair as a CSV line."""
    for sample in samples:
        pairs += [f"{user_name(int(u))},{sample['__key__']}\n" for u in sample.get("usr", "").split(",") if u]
        yield sample


def build_demo(out: str | Path, spec: DemoSpec = DemoSpec()) -> Path:
    """Write the demo shards and `dataset.json` into `out` (atomically: a temporary dir renamed at the end).

    An earlier demo dataset in `out` is replaced; anything else there is refused (`OutputError`), never removed.
    """
    out = check_output_dir(out, flag="demo directory")
    if out.exists() and any(out.iterdir()) and not _is_demo(out):
        raise OutputError(f"demo directory {out} is not empty and holds no mmfuse demo dataset: choose a new or "
                          f"empty directory")
    with atomic_dir(out, prefix=".demo-", replace=True) as tmp:
        splits, offset, pairs = {}, 0, ["user,item\n"]
        for split, count in (("train", spec.train), ("val", spec.val), ("test", spec.test)):
            samples = _recording_pairs(make_samples(spec, split, count, offset), pairs)
            splits[split] = write_split(tmp, split, samples, spec.shard_size)
            offset += count
        meta = {
            "name": "mmfuse-demo",
            "modalities": {"text": ["txt"], "image": ["jpg"], "audio": ["flac"]},
            "label_field": "cls",
            "labels": list(LABELS),
            "splits": splits,
            "generator": {"module": __name__, "spec": asdict(spec)},
        }
        if spec.interactions:
            meta.update(task="interactions", users=[user_name(u) for u in range(spec.users)])
            (tmp / "pairs.csv").write_text("".join(pairs))
        write_dataset_json(tmp, meta)
    return out


def _is_demo(path: Path) -> bool:
    """Whether `path` holds a demo dataset this module wrote (its dataset.json names the generator)."""
    try:
        meta = json.loads((path / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("name") == "mmfuse-demo" and isinstance(meta.get("generator"), dict) \
        and meta["generator"].get("module") == __name__


def demo_dataset(spec: DemoSpec = DemoSpec(), root: str | Path | None = None) -> Path:
    """Path of the cached demo dataset, generating it on first use (a few seconds)."""
    path = Path(root or cache_dir()) / spec.cache_name()
    if not (path / "dataset.json").exists():
        try:
            build_demo(path, spec)
        except (OSError, OutputError) as err:
            raise DataError(
                f"cannot write the demo dataset to {path}: {err} (set MMFUSE_CACHE to a writable dir)") from None
    return path
