"""`weights_fingerprint`: the identity of a module's weights, one sha256 for the serving code (a `Embedder`'s
fingerprint, the ONNX graph's metadata and cache key) and the feature cache (an encoder's weights)."""

from __future__ import annotations

import hashlib

import torch


def weights_fingerprint(module: torch.nn.Module) -> str:
    """sha256 of `module`'s parameters and buffers (names, dtypes, shapes and bytes): equal weights, equal digest."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # flat: 0-d tensors too
    return digest.hexdigest()
