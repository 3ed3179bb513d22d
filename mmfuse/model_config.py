"""The model section of a run config: `ModelConfig` (what `config.json` beside a checkpoint holds), the encoder of each
modality (`EncoderSpec`) and the demo's towers. Plain dataclasses: parsing them imports no torch; the names they give
(encoders, fusion, task) are checked against their registries when a run starts (`mmfuse.tasks.check_model_config`)
and when the model is built."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ConfigError

MODALITIES = ("text", "image", "audio")


@dataclass
class EncoderSpec:
    """Which encoder a modality uses: a registered `name` (optionally `name:backbone`) and its keyword arguments."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = True
    """Load pretrained weights (ignored by the random-init `tiny-*` presets)."""


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; saved as `config.json` beside its weights. Parsing it imports no
    torch: the names it gives (encoders, fusion, task) are checked against their registries when it is resolved
    (`resolve`, `check_registered`) and when the model is built."""

    modalities: list[str]
    """Modalities the model reads, any of text, image, audio."""
    encoders: dict[str, EncoderSpec]
    """Encoder per modality (entries for unused modalities are ignored)."""
    labels: list[str] = field(default_factory=list)
    """Output names: class names (classification, multilabel) or target names (regression); filled from the
    dataset at training time; empty for contrastive."""
    fusion: str = "concat-mlp"
    """A registered fusion (`mmfuse list`)."""
    dim: int = 128
    """Shared width every modality is projected to; the fused embedding's size."""
    fusion_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments of the fusion."""
    dropout: float = 0.1
    """Dropout before the classifier."""
    adapters: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-tower parameter-efficient fine-tuning, e.g. {text: {method: lora, r: 8}}; that tower's base is frozen."""
    modality_dropout: float = 0.0
    """Training only: probability of hiding each modality of a sample from the fusion (never all of a sample's
    present modalities at once), so a model trained on several modalities still serves a sample with one."""
    task: str = "classification"
    """What the model learns (`mmfuse list`): classification | multilabel | regression | contrastive. A checkpoint
    without this field is a classifier."""
    task_kwargs: dict[str, Any] = field(default_factory=dict)
    """Task options, e.g. {loss: huber} (regression), {threshold: 0.3} (multilabel), {ks: [1, 5]} (contrastive)."""
    contrastive_loss: str = "infonce"
    """Alignment loss between the modalities' pooled projections: infonce (CLIP) | siglip. Used by the contrastive
    task, and by any task when `contrastive_weight` > 0."""
    contrastive_weight: float = 0.0
    """Weight of the contrastive alignment added to a supervised task's loss (0: none). A model setting, not a
    train one: the alignment's learnable temperature is part of the checkpoint."""

    def __post_init__(self) -> None:
        self.encoders = {m: s if isinstance(s, EncoderSpec) else EncoderSpec(**s) for m, s in self.encoders.items()}
        for m in self.modalities:
            if m not in MODALITIES:
                raise ConfigError(f"unknown modality '{m}'; choose from {', '.join(MODALITIES)}")
            if m not in self.encoders:
                raise ConfigError(f"modality '{m}' has no encoder: set model.encoders.{m}")
        if not self.modalities:
            raise ConfigError("at least one modality is needed")
        if len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"modalities repeat: {', '.join(self.modalities)}")
        if self.dim <= 0:
            raise ConfigError(f"model.dim must be > 0, got {self.dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout is a probability in [0, 1), got {self.dropout}")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ConfigError(f"model.modality_dropout is a probability in [0, 1), got {self.modality_dropout}")
        if not 0 <= self.contrastive_weight < float("inf"):  # NaN fails too
            raise ConfigError(f"model.contrastive_weight must be a finite number >= 0, got {self.contrastive_weight}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)



def default_encoders() -> dict[str, EncoderSpec]:
    """The demo's tiny random-init towers (what `configs/demo.yaml` spells out)."""
    return {
        "text": EncoderSpec("tiny-text", {"width": 64, "layers": 2, "heads": 2}),
        "image": EncoderSpec("tiny-image", {"width": 64, "layers": 2, "heads": 2, "image_size": 64, "patch_size": 8}),
        "audio": EncoderSpec("tiny-audio", {"width": 64, "layers": 2, "heads": 2, "n_mels": 32, "patch_size": 8,
                                            "max_seconds": 1.0}),
    }
