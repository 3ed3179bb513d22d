"""`FusionModel`: per-modality encoders -> projection to a shared width -> fusion -> task head.

TorchMultimodal's `LateFusion` composition: the class receives built modules; `build_model` takes a plain
`ModelConfig` and builds them through the encoder and fusion registries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .encoders import Encoder, create_encoder
from .encoders.base import EncoderOutput
from .encoders.registry import split_encoder_name
from .errors import ConfigError
from .fusion import Fusion, ModalityFeatures, create_fusion
from .fusion.base import check_fusion_kwargs

MODALITIES = ("text", "image", "audio")


@dataclass
class EncoderSpec:
    """Which encoder a modality uses: a registered `name` (optionally `name:backbone`) and its keyword arguments."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = True
    """Load pretrained weights (ignored by the random-init `tiny-*` presets)."""

    def build(self) -> Encoder:
        name, implied = split_encoder_name(self.name)
        try:
            return create_encoder(name, pretrained=self.pretrained, **{**implied, **self.kwargs})
        except TypeError as err:  # an option the encoder does not take
            raise ConfigError(f"encoder '{self.name}': {err}") from None


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; saved as `config.json` beside its weights."""

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
        check_fusion_kwargs(self.fusion, self.fusion_kwargs)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout is a probability in [0, 1), got {self.dropout}")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ConfigError(f"model.modality_dropout is a probability in [0, 1), got {self.modality_dropout}")
        from .tasks import TASKS

        TASKS.get(self.task)  # an unknown task is a ConfigError naming the known ones
        if not 0 <= self.contrastive_weight < float("inf"):  # NaN fails too
            raise ConfigError(f"model.contrastive_weight must be a finite number >= 0, got {self.contrastive_weight}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ClassificationHead(nn.Module):
    """Dropout + linear. Inputs: (B, D). Returns: logits (B, C)."""

    def __init__(self, dim: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(x))


class FusionModel(nn.Module):
    """Encoders + per-modality projections (+ modality-type embeddings for token fusions) + fusion + head
    (+ a contrastive `alignment` of the modalities).

    `forward(batch)` -> head outputs (B, C) (the fused embedding (B, D) for a model without head);
    `forward(batch, outputs=True)` -> the dict a `Task` reads (`mmfuse.tasks.base`); `embed(batch)` -> fused
    embedding (B, D); `encode(batch)` -> per-modality `ModalityFeatures` at width D. The batch layout is documented
    in `mmfuse.data.batch`. In training mode each modality of a sample is hidden from the fusion with probability
    `modality_dropout`.
    """

    def __init__(self, encoders: dict[str, Encoder], fusion: Fusion, head: nn.Module | None,
                 modality_dropout: float = 0.0, alignment: nn.Module | None = None, task: Any = None) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.projections = nn.ModuleDict({m: nn.Linear(e.width, fusion.dim) for m, e in encoders.items()})
        if fusion.uses_tokens:  # token fusions see a bag of tokens from all modalities: tell them which is which
            self.type_embeddings = nn.ParameterDict(
                {m: nn.Parameter(torch.randn(fusion.dim) * 0.02) for m in encoders})
        self.fusion = fusion
        self.head = head
        self.alignment = alignment
        self.modality_dropout = modality_dropout
        self.task = task  # the `mmfuse.tasks.Task` it was built for (None: a classifier assembled by hand)

    @property
    def modalities(self) -> list[str]:
        return sorted(self.encoders)

    def encode(self, batch: dict[str, Any], modalities: list[str] | None = None) -> dict[str, ModalityFeatures]:
        """Per-modality features at width D; `modalities` (default all) limits which encoders run."""
        features = {}
        for m in self.modalities if modalities is None else sorted(modalities):
            out = cached_output(batch, m) if f"cached_{m}_pooled" in batch else self.encoders[m](batch)
            project = self.projections[m]
            present = batch.get(f"present_{m}")
            if present is None:
                present = torch.ones(out.pooled.shape[0], dtype=torch.bool, device=out.pooled.device)
            tokens = project(out.tokens) + self.type_embeddings[m] if self.fusion.uses_tokens else out.tokens
            features[m] = ModalityFeatures(tokens=tokens, mask=out.mask, pooled=project(out.pooled), present=present)
        if self.training and self.modality_dropout > 0 and len(features) > 1:
            drop_modalities(features, self.modality_dropout)
        return features

    def embed(self, batch: dict[str, Any], modalities: list[str] | None = None) -> torch.Tensor:
        """Fused embedding (B, D); modalities left out of `modalities` count as absent for every sample."""
        return self.fusion(self.encode(batch, modalities))  # (B, D)

    def forward(self, batch: dict[str, Any], outputs: bool = False) -> Any:
        if not outputs:
            fused = self.embed(batch)  # (B, D)
            return self.head(fused) if self.head is not None else fused  # (B, C)
        present = {m: batch.get(f"present_{m}") for m in self.modalities}  # before modality dropout
        features = self.encode(batch)
        present = {m: p if p is not None else features[m].present for m, p in present.items()}
        pooled = {m: f.pooled for m, f in features.items()}  # (B, D) each
        out = {"head": self.head(self.fusion(features)) if self.head is not None else None,
               "pooled": pooled, "present": present}
        if self.alignment is not None and self.training:
            out["alignment"] = self.alignment(pooled, present)
        return out

    def frozen_towers(self) -> list[str]:
        """Modalities whose encoder has no trainable parameter (the towers a feature cache may serve)."""
        return [m for m in self.modalities
                if not any(p.requires_grad for p in self.encoders[m].parameters())]

    def train(self, mode: bool = True) -> FusionModel:
        """Training mode, except frozen towers stay in eval mode: no dropout noise and no BatchNorm statistics
        updates in a tower that does not learn (so its outputs are fixed, and cacheable)."""
        super().train(mode)
        for m in self.frozen_towers():
            self.encoders[m].eval()
        return self

    def preprocessors(self) -> dict[str, Any]:
        """The encoders' preprocessors keyed by modality (what the loader and `Predictor` apply)."""
        return {m: self.encoders[m].preprocessor for m in self.modalities}


def cached_output(batch: dict[str, Any], m: str) -> EncoderOutput:
    """The encoder output of modality `m` a feature cache put in the batch: `cached_<m>_pooled` (B, W),
    `cached_<m>_tokens` (B, T, W) and `cached_<m>_mask` (B, T)."""
    return EncoderOutput(tokens=batch[f"cached_{m}_tokens"], mask=batch[f"cached_{m}_mask"],
                         pooled=batch[f"cached_{m}_pooled"])


def drop_modalities(features: dict[str, ModalityFeatures], p: float) -> None:
    """Mark each present modality of each sample absent with probability `p`, in place, but never all of a
    sample's present modalities (then the sample keeps them all)."""
    names = sorted(features)
    drops = {m: torch.rand(features[m].present.shape, device=features[m].present.device) < p for m in names}
    keeps_one = torch.stack([features[m].present & ~drops[m] for m in names]).any(0)  # (B,)
    for m in names:
        features[m].present = features[m].present & (~drops[m] | ~keeps_one)


def build_model(config: ModelConfig) -> FusionModel:
    """Build encoders, fusion, the task's head (and the contrastive alignment) from a `ModelConfig`."""
    from .tasks import create_task

    task = create_task(config)
    encoders = {m: config.encoders[m].build() for m in config.modalities}
    if config.adapters:
        from .adapters import apply_adapters

        apply_adapters(encoders, config.adapters)
    fusion = create_fusion(config.fusion, modalities=list(config.modalities), dim=config.dim,
                           **config.fusion_kwargs)
    alignment = None
    if task.aligns:
        from .tasks.contrastive import Alignment

        alignment = Alignment(list(config.modalities), config.contrastive_loss)
    return FusionModel(encoders, fusion, task.build_head(config.dim, config.dropout),
                       modality_dropout=config.modality_dropout, alignment=alignment, task=task)
