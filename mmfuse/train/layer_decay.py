"""Layer-wise learning-rate decay (BEiT / ELECTRA): lower layers of an encoder learn slower than its top.

Layer ids per encoder with L blocks: parameters registered before the first block (embeddings, patch/position
embeddings, class token) are layer 0, block k (1-based, from the input) is layer k, everything after the last block
(final norm, pooler, projection) is layer L + 1. A parameter of layer i learns at `decay ** (L + 1 - i)` times its
tower's learning rate; fusion, projections and head are not scaled.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..encoders.hf_common import hf_layers

BLOCK_PATHS = ("blocks", "transformer.resblocks", "visual.transformer.resblocks", "trunk.blocks")
"""Where non-`transformers` backbones keep their blocks: timm ViTs, open_clip text and image towers."""


def _module_at(root: nn.Module, path: str) -> Any:
    node: Any = root
    for part in path.split("."):
        node = getattr(node, part, None)
    return node


def encoder_layers(encoder: nn.Module) -> list[nn.Module]:
    """The transformer blocks of an encoder, input first ([] when it has none that mmfuse knows)."""
    for root in (getattr(encoder, "backbone", None), encoder, getattr(encoder, "visual", None)):
        if root is None:
            continue
        layers = hf_layers(root)
        if layers:
            return layers
        for path in BLOCK_PATHS:
            node = _module_at(root, path)
            if isinstance(node, (nn.ModuleList, nn.Sequential)) and len(node):
                return list(node)
    return []


def layer_ids(encoder: nn.Module) -> tuple[dict[str, int], int]:
    """Parameter name (relative to `encoder`) -> layer id, and the number of blocks L."""
    layers = encoder_layers(encoder)
    owner = {id(p): k + 1 for k, layer in enumerate(layers) for p in layer.parameters()}
    ids, seen_block = {}, False
    for name, param in encoder.named_parameters():
        if id(param) in owner:
            ids[name], seen_block = owner[id(param)], True
        else:
            ids[name] = len(layers) + 1 if seen_block else 0
    if not layers:
        ids = {name: 1 for name in ids}  # no blocks: nothing to decay (L + 1 - 1 = 0)
    return ids, len(layers)


def layer_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """Full parameter name (`encoders.<m>....`) -> learning-rate factor, for every encoder parameter."""
    scales = {}
    for m, encoder in getattr(model, "encoders", {}).items():
        ids, n = layer_ids(encoder)
        for name, layer in ids.items():
            scales[f"encoders.{m}.{name}"] = decay ** (n + 1 - layer) if n else 1.0
    return scales
