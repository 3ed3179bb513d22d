"""What the suite runs: `BenchConfig` (the user's options) and the case list of each preset.

Presets:
    default  the demo model (tiny text / image / audio towers, 64 px, 1 s log-mel), a BERT-small-sized text tower
             (L4, H512) and a ViT-S/16 at 224 px, all random-init; about 7 minutes on 2 CPU cores.
    tiny     width-16 towers and one short repeat per case: for tests and smoke checks, not for numbers.
    gpu      GPU-sized encode / train / embed cases: a BERT-base-shaped text tower (L12, H768) at 128 tokens, a
             ViT-B/16 at 224 px, both together, and the demo model, random-init, at batch sizes that fill a large
             GPU (run it with --device cuda --precision bf16; `benchmarks/gpu_check.sh` does). Lower them with
             --batch-size on a smaller GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import ConfigError
from ..model_config import default_encoders

CASE_KINDS = ("loader", "encode", "train", "embed", "lever", "text-embed", "embed-backends")
DEFAULT_KINDS = ("loader", "encode", "train", "embed")
"""What runs without --cases; `lever` (one speed lever on vs off, see `levers.py`), `text-embed` (mmfuse vs
sentence-transformers on all-MiniLM-L6-v2, fp32, int8 and onnx, see `textembed.py`) and `embed-backends` (the demo
model's `Embedder.embed`, fp32 vs int8 vs onnx, see `backends.py`) are asked for by name."""
PRESETS = ("default", "tiny", "gpu")

TOWERS: dict[str, dict[str, dict[str, Any]]] = {
    "demo": {m: {"name": spec.name, "kwargs": dict(spec.kwargs)} for m, spec in default_encoders().items()},
    "bert-small": {"text": {"name": "tiny-text", "kwargs": {"width": 512, "layers": 4, "heads": 8,
                                                            "max_length": 128}}},
    "vit-s": {"image": {"name": "timm-image", "kwargs": {"model": "vit_small_patch16_224", "image_size": 224}}},
    "bert-base": {"text": {"name": "tiny-text", "kwargs": {"width": 768, "layers": 12, "heads": 12,
                                                           "max_length": 512}}},
    "vit-b16": {"image": {"name": "timm-image", "kwargs": {"model": "vit_base_patch16_224", "image_size": 224}}},
    "effnet-lite0": {"image": {"name": "timm-image", "kwargs": {"model": "tf_efficientnet_lite0",
                                                                "image_size": 128}}},
    "tiny": {"text": {"name": "tiny-text", "kwargs": {"width": 16, "layers": 1, "heads": 2}},
             "image": {"name": "tiny-image", "kwargs": {"width": 16, "layers": 1, "heads": 2, "image_size": 32}},
             "audio": {"name": "tiny-audio", "kwargs": {"width": 16, "layers": 1, "heads": 2, "n_mels": 16,
                                                        "patch_size": 8, "max_seconds": 1.0}}},
}
TOWERS["bert-small+vit-s"] = {**TOWERS["bert-small"], **TOWERS["vit-s"]}
TOWERS["bert-base+vit-b16"] = {**TOWERS["bert-base"], **TOWERS["vit-b16"]}
"""Tower sets (random-init, nothing downloads): `bert-small` is Google's BERT-small shape (4 layers, width 512,
8 heads) over the packaged vocabulary; `vit-s` is timm's ViT-S/16 (12 layers, width 384) at 224 px;
`bert-small+vit-s` is both (the frozen-cache lever at a realistic tower cost); `effnet-lite0` is timm's
EfficientNet-Lite0 at 128 px (the CNN family of the precision lever). `bert-base` is BERT-base's shape (12 layers,
width 768, 12 heads, 512 positions; the packaged vocabulary is smaller, which changes no matmul), `vit-b16` timm's
ViT-B/16 at 224 px, `bert-base+vit-b16` both (the GPU preset)."""


@dataclass
class BenchConfig:
    """Options of a bench run (the CLI maps its flags onto these fields)."""

    cases: list[str] = field(default_factory=lambda: list(DEFAULT_KINDS))
    """Case kinds to run, from loader, encode, train, embed, lever, text-embed, embed-backends."""
    preset: str = "default"
    """default | tiny | gpu (see the module docstring)."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N."""
    precision: str = "auto"
    """auto | fp32 | bf16 | fp16, resolved by hardware like `finetune`; the calibration matmul uses the same dtype."""
    batch_size: int | None = None
    """Override every case's batch size (e.g. larger on a GPU)."""
    modalities: list[str] | None = None
    """Replace the demo model's train/embed cases with this modality set."""
    fusion: str | None = None
    """Replace the demo model's train/embed cases' fusion."""
    compile: bool = False
    """`torch.compile` the models (trainer and baseline alike); the compile time is in the warm-up."""
    workers: int = 0
    """Loader worker processes in the loader case and the train case's data-fed pass."""
    repeats: int = 5
    """Timed repeats per case (median and IQR are over these)."""
    warmup: int = 1
    """Untimed calls of each workload before the repeats."""
    min_time: float = 1.0
    """Seconds a repeat should last at least; the steps per repeat are sized from a warm-up step."""
    data: str | None = None
    """Shard directory with a dataset.json; None uses the embedded demo dataset."""
    only: list[str] | None = None
    """Keep only the cases whose name contains one of these strings (e.g. ["precision"])."""

    def __post_init__(self) -> None:
        unknown = [c for c in self.cases if c not in CASE_KINDS]
        if unknown or not self.cases:
            raise ConfigError(f"unknown bench case(s) {', '.join(unknown) or '(none)'}; choose from "
                              f"{', '.join(CASE_KINDS)}")
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown bench preset '{self.preset}'; choose from {', '.join(PRESETS)}")
        for name in ("repeats", "warmup"):
            if getattr(self, name) < (1 if name == "repeats" else 0):
                raise ConfigError(f"bench {name} must be >= {1 if name == 'repeats' else 0}")
        if self.batch_size is not None and self.batch_size <= 0:
            raise ConfigError(f"bench batch size must be > 0, got {self.batch_size}")
        if self.workers < 0 or self.min_time < 0:
            raise ConfigError("bench workers and min-time must be >= 0")


@dataclass
class CaseSpec:
    """One case: its kind, the towers it uses, modalities, fusion and batch size."""

    kind: str
    towers: str
    modalities: list[str]
    batch_size: int
    fusion: str = "concat-mlp"
    lever: str | None = None
    """For kind `lever`: cache, compile, grad-ckpt, fused-adamw, channels-last or precision."""
    text_tokens: int | None = None
    """Time the text tower on `text_tokens`-long sequences of random ids instead of the demo's short titles
    (encode and train cases; compute does not depend on the ids)."""
    split: str | None = None
    """Loader cases: the split to read (default: the suite's, train); the audio case reads the smaller val split.
    Also the cache lever's split."""
    max_repeats: int | None = None
    """Cap on the suite's repeats for a slow case (the cache lever with ViT-S recomputes a split per repeat)."""

    @property
    def name(self) -> str:
        parts = [self.kind, *([self.lever] if self.lever else []), self.towers, "+".join(self.modalities)]
        if self.kind in ("train", "embed", "embed-backends"):
            parts.append(self.fusion)
        return "/".join(parts) + (f"@{self.text_tokens}tok" if self.text_tokens else "") + (
            f"@{self.split}" if self.split else "")

    def encoders(self) -> dict[str, dict[str, Any]]:
        towers = TOWERS[self.towers]
        return {m: {**towers[m], "pretrained": False} for m in self.modalities}


def _gpu_cases() -> list[CaseSpec]:
    """GPU-sized towers and batches (bf16 on an 80-141 GB GPU; the demo's train split holds 3000 samples)."""
    return [CaseSpec("encode", "bert-base", ["text"], 512, text_tokens=128),
            CaseSpec("encode", "vit-b16", ["image"], 512),
            CaseSpec("train", "bert-base", ["text"], 256, text_tokens=128),
            CaseSpec("train", "vit-b16", ["image"], 256),
            CaseSpec("train", "bert-base+vit-b16", ["text", "image"], 128, text_tokens=128),
            CaseSpec("train", "demo", ["text", "image"], 256),
            CaseSpec("embed", "demo", ["text", "image"], 256)]


def _preset_cases(preset: str) -> list[CaseSpec]:
    if preset == "gpu":
        return _gpu_cases()
    if preset == "tiny":
        return [CaseSpec("loader", "tiny", ["text", "image", "audio"], 16),
                CaseSpec("encode", "tiny", ["text"], 16, text_tokens=24),
                CaseSpec("encode", "tiny", ["text"], 16), CaseSpec("encode", "tiny", ["image"], 16),
                CaseSpec("encode", "tiny", ["audio"], 16),
                CaseSpec("train", "tiny", ["text", "image"], 16), CaseSpec("train", "tiny", ["text"], 16),
                CaseSpec("embed", "tiny", ["text", "image"], 16),
                *(CaseSpec("lever", "tiny", ["text", "image"], 16, lever=lever)
                  for lever in ("cache", "grad-ckpt", "fused-adamw", "precision")),
                CaseSpec("text-embed", "tiny", ["text"], 16),
                CaseSpec("embed-backends", "tiny", ["text", "image"], 16)]
    return [CaseSpec("loader", "demo", ["text", "image"], 64),
            CaseSpec("loader", "demo", ["text", "image", "audio"], 64, split="val"),
            CaseSpec("encode", "demo", ["text"], 64), CaseSpec("encode", "demo", ["image"], 64),
            CaseSpec("encode", "demo", ["audio"], 64),
            CaseSpec("encode", "bert-small", ["text"], 64),
            CaseSpec("encode", "bert-small", ["text"], 32, text_tokens=128),
            CaseSpec("encode", "vit-s", ["image"], 16),
            CaseSpec("train", "demo", ["text", "image"], 64), CaseSpec("train", "demo", ["text", "image"], 64, "gated"),
            CaseSpec("train", "demo", ["text", "image", "audio"], 64, "cross-attention"),
            CaseSpec("train", "demo", ["text"], 64), CaseSpec("train", "demo", ["image"], 64),
            CaseSpec("train", "bert-small", ["text"], 64),
            CaseSpec("train", "bert-small", ["text"], 32, text_tokens=128),
            CaseSpec("train", "vit-s", ["image"], 8),
            CaseSpec("embed", "demo", ["text", "image"], 128),
            *(CaseSpec("lever", "demo", ["text", "image"], 64, lever=lever)
              for lever in ("cache", "compile", "grad-ckpt", "fused-adamw")),
            CaseSpec("lever", "bert-small+vit-s", ["text", "image"], 32, lever="cache", split="val", max_repeats=3),
            # bf16 autocast vs fp32 per tower family: the tiny demo towers, a text transformer, a ViT, a CNN
            CaseSpec("lever", "demo", ["text", "image"], 64, lever="precision"),
            CaseSpec("lever", "bert-small", ["text"], 32, lever="precision", text_tokens=128),
            CaseSpec("lever", "vit-s", ["image"], 16, lever="precision"),
            CaseSpec("lever", "effnet-lite0", ["image"], 32, lever="precision"),
            CaseSpec("lever", "effnet-lite0", ["image"], 32, lever="channels-last"),
            CaseSpec("text-embed", "minilm", ["text"], 32),
            CaseSpec("embed-backends", "demo", ["text", "image"], 128)]


def build_cases(cfg: BenchConfig) -> list[CaseSpec]:
    """The preset's cases of the requested kinds, with the config's overrides applied."""
    cases = [c for c in _preset_cases(cfg.preset) if c.kind in cfg.cases]
    if cfg.modalities is not None or cfg.fusion is not None:
        small = "tiny" if cfg.preset == "tiny" else "demo"
        unknown = [m for m in cfg.modalities or [] if m not in TOWERS[small]]
        if unknown:
            raise ConfigError(f"bench has no {small} tower for modality {', '.join(unknown)}; "
                              f"choose from {', '.join(TOWERS[small])}")
        seen, kept = set(), []
        for c in cases:
            if c.towers == small and c.kind in ("train", "embed", "embed-backends"):
                c = replace(c, modalities=list(cfg.modalities or c.modalities), fusion=cfg.fusion or c.fusion)
                if c.name in seen:
                    continue
                seen.add(c.name)
            kept.append(c)
        cases = kept
    if cfg.only:
        cases = [c for c in cases if any(part in c.name for part in cfg.only)]
        if not cases:
            raise ConfigError(f"no {cfg.preset} bench case of kind {', '.join(cfg.cases)} has a name containing "
                              f"{' or '.join(cfg.only)}")
    if cfg.batch_size is not None:
        cases = [replace(c, batch_size=cfg.batch_size) for c in cases]
    return cases
