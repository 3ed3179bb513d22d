"""Fusions: each registered by name; `forward(dict[modality, ModalityFeatures]) -> (B, D)`."""

from . import bottleneck, cross_attention, embedding, interaction, lowrank  # noqa: F401  (register them)
from .base import Fusion, ModalityFeatures, create_fusion, list_fusions, register_fusion

__all__ = ["Fusion", "ModalityFeatures", "create_fusion", "list_fusions", "register_fusion"]
