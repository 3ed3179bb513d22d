"""`FusionModel`: per-modality encoders -> projection to a shared width -> fusion -> head.

TorchMultimodal's `LateFusion` composition: the class receives built modules; `build_model` takes a plain
`ModelConfig` (`mmfuse.config`) and builds the encoders and the fusion through their registries around the head it
is handed. The model knows no task: a task (`mmfuse.tasks`) supplies the head and owns the loss.

The model knows no feature cache either: a training run that caches a frozen tower's outputs swaps that tower's
encoder for a `CachedEncoder` (mmfuse.train.feature_cache), which answers `forward(batch)` like the encoder. Encoder
outputs computed elsewhere (the ONNX export) go through `project(outputs, batch)`, the step after the encoders.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .encoders import Encoder, create_encoder
from .encoders.base import EncoderOutput
from .encoders.registry import split_encoder_name
from .errors import ConfigError
from .fusion import Fusion, ModalityFeatures, create_fusion
from .fusion.base import check_fusion_kwargs
from .model_config import MODALITIES, EncoderSpec, ModelConfig
from .precision import tower_autocast

__all__ = ["MODALITIES", "ClassificationHead", "EncoderSpec", "FusionModel", "ModelConfig", "build_encoder",
           "build_model", "build_parts"]


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
    `forward(batch, outputs=True)` -> {head (B, C) or None, pooled {m: (B, D)}, present {m: (B,) bool} and, in
    training mode with an `alignment`, alignment (a scalar)}: what a task's loss and metrics read;
    `embed(batch)` -> fused embedding (B, D); `encode(batch)` -> per-modality `ModalityFeatures` at width D, the
    encoders' outputs through `project(outputs, batch)`. The batch layout is documented in `mmfuse.data.batch`. In
    training mode each modality of a sample is hidden from the fusion with probability `modality_dropout`.
    """

    def __init__(self, encoders: dict[str, Encoder], fusion: Fusion, head: nn.Module | None,
                 modality_dropout: float = 0.0, alignment: nn.Module | None = None) -> None:
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
        self.keep_norm_statistics = False
        """In training mode, pretrained towers' BatchNorm layers normalise with their running statistics and do not
        update them (their scale and shift still learn): set by the trainer from `train.keep_norm_statistics`."""

    @property
    def modalities(self) -> list[str]:
        return sorted(self.encoders)

    def encode(self, batch: dict[str, Any], modalities: list[str] | None = None) -> dict[str, ModalityFeatures]:
        """Per-modality features at width D; `modalities` (default all) limits which encoders run."""
        names = self.modalities if modalities is None else sorted(modalities)
        outputs = {}
        for m in names:
            with tower_autocast(self.encoders[m]):  # a CNN tower runs fp32 inside a CPU bf16 autocast
                outputs[m] = self.encoders[m](batch)
        return self.project(outputs, batch)

    def project(self, outputs: Mapping[str, EncoderOutput], batch: dict[str, Any]) -> dict[str, ModalityFeatures]:
        """Encoder outputs (tokens (B, T, W), mask (B, T), pooled (B, W) per modality) -> `ModalityFeatures` at
        width D: projected (token fusions: plus the modality-type embedding), present where `batch` says
        (`present_<m>`; default: every sample), and in training mode hidden with probability `modality_dropout`."""
        features = {}
        for m in sorted(outputs):
            out, project = outputs[m], self.projections[m]
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
        updates in a tower that does not learn (so its outputs are fixed, and cacheable). With
        `keep_norm_statistics`, the BatchNorm layers of towers holding pretrained weights stay in eval mode too."""
        super().train(mode)
        for m in self.frozen_towers():
            self.encoders[m].eval()
        if mode and self.keep_norm_statistics:
            for encoder in self.encoders.values():
                if getattr(encoder, "pretrained", False):
                    for module in encoder.modules():
                        if isinstance(module, nn.modules.batchnorm._BatchNorm):
                            module.eval()
        return self

    def preprocessors(self) -> dict[str, Any]:
        """The encoders' preprocessors keyed by modality (what the loader and `Predictor` apply)."""
        return {m: self.encoders[m].preprocessor for m in self.modalities}


def drop_modalities(features: dict[str, ModalityFeatures], p: float) -> None:
    """Mark each present modality of each sample absent with probability `p`, in place, but never all of a
    sample's present modalities (then the sample keeps them all)."""
    names = sorted(features)
    drops = {m: torch.rand(features[m].present.shape, device=features[m].present.device) < p for m in names}
    keeps_one = torch.stack([features[m].present & ~drops[m] for m in names]).any(0)  # (B,)
    for m in names:
        features[m].present = features[m].present & (~drops[m] | ~keeps_one)


def build_encoder(spec: EncoderSpec) -> Encoder:
    """The encoder a spec names (`name` or `name:backbone`), with its keyword arguments."""
    name, implied = split_encoder_name(spec.name)
    try:
        return create_encoder(name, pretrained=spec.pretrained, **{**implied, **spec.kwargs})
    except TypeError as err:  # an option the encoder does not take
        raise ConfigError(f"encoder '{spec.name}': {err}") from None


def build_parts(config: ModelConfig) -> tuple[dict[str, Encoder], Fusion]:
    """The encoders (with their adapters) and the fusion of `config`, in that order (a seed gives the same
    weights)."""
    check_fusion_kwargs(config.fusion, config.fusion_kwargs)
    encoders = {m: build_encoder(config.encoders[m]) for m in config.modalities}
    if config.adapters:
        from .adapters import apply_adapters

        apply_adapters(encoders, config.adapters)
    fusion = create_fusion(config.fusion, modalities=list(config.modalities), dim=config.dim,
                           **config.fusion_kwargs)
    return encoders, fusion


def build_model(config: ModelConfig, head: nn.Module | None, alignment: nn.Module | None = None) -> FusionModel:
    """Encoders and fusion built from `config` around `head` (None: the model outputs the fused embedding) and an
    optional contrastive `alignment`. A task builds both: `mmfuse.tasks.create_model_and_task(config)`."""
    encoders, fusion = build_parts(config)
    return FusionModel(encoders, fusion, head, modality_dropout=config.modality_dropout, alignment=alignment)
