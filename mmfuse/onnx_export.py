"""ONNX export of the fused embedder (`torch.onnx.export`, dynamo) and an onnxruntime embedder with the same
preprocessing. Batch, token and audio-frame axes are dynamic. Needs `onnx`, `onnxscript` and `onnxruntime`.

    path = export_onnx(mmfuse.load("runs/mine"), "embedder.onnx")
    emb = OnnxEmbedder(mmfuse.load("runs/mine"), path)   # the Predictor supplies the preprocessing
    emb.embed(records, normalize=True)                    # (N, D) like Predictor.embed
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime  # noqa: F401 - fail at import when the ONNX runtime is missing
import torch

from .data.batch import Collator
from .errors import ConfigError
from .inference import Predictor
from .records import length_order, windows


def _example_records(modalities: list[str]) -> list[dict[str, Any]]:
    """Three records whose text and audio lengths differ, so no axis meant to be dynamic is traced as size 1."""
    rng = np.random.default_rng(0)
    records = []
    for i, words in enumerate((3, 7, 12)):
        record: dict[str, Any] = {}
        if "text" in modalities:
            record["text"] = " ".join(["oak", "toy", "steel", "piece"] * 3)[: 6 * words]
        if "image" in modalities:
            record["image"] = rng.integers(0, 255, (40 + 8 * i, 48, 3), dtype=np.uint8)
        if "audio" in modalities:
            record["audio"] = (rng.standard_normal(4000 * (i + 2)).astype(np.float32) * 0.1, 16_000)
        records.append(record)
    return records


def parity_records(modalities: list[str], count: int = 16) -> list[dict[str, Any]]:
    """Sample records to compare the exported graph with PyTorch: varied lengths, some modalities missing."""
    rng = np.random.default_rng(1)
    words = ["a", "sturdy", "oak", "toy", "steel", "piece", "with", "round", "corners"]
    records = []
    for i in range(count):
        record: dict[str, Any] = {}
        if "text" in modalities and i % 4 != 1:
            record["text"] = " ".join(rng.choice(words, 2 + 3 * (i % 5)))
        if "image" in modalities and i % 4 != 2:
            record["image"] = rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)
        if "audio" in modalities and i % 4 != 3:
            record["audio"] = (rng.standard_normal(3000 * (i % 3 + 1)).astype(np.float32) * 0.1, 16_000)
        records.append(record)
    return records


class _Graph(torch.nn.Module):
    """The model's embedding path with positional tensor inputs (ONNX has no dict inputs)."""

    def __init__(self, model: torch.nn.Module, keys: list[str]) -> None:
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model.embed(dict(zip(self.keys, tensors, strict=True)))  # (B, D)


def _dynamic(key: str, shape: torch.Size) -> dict[int, Any]:
    batch = torch.export.Dim("batch")
    dims: dict[int, Any] = {0: batch}
    if key in ("text_ids", "text_mask"):
        dims[1] = torch.export.Dim("tokens")
    elif key in ("audio", "audio_mask") and len(shape) >= 2:
        dims[1] = torch.export.Dim("frames")
    return dims


def export_onnx(predictor: Predictor, path: str | Path) -> Path:
    """Write the fused embedder of `predictor` (fp32) to `path` as ONNX; returns the path."""
    if predictor.backend != "fp32":
        raise ConfigError("export the fp32 model to ONNX (load it with backend='fp32')")
    samples = [predictor.prepare(r, i) for i, r in enumerate(_example_records(predictor.modalities))]
    batch = Collator(predictor.preprocessors)(samples)
    keys = sorted(k for k, v in batch.items() if isinstance(v, torch.Tensor))
    args = tuple(batch[k] for k in keys)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = _Graph(predictor.model, keys).eval()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, args, str(path), dynamo=True, input_names=keys, output_names=["fused"],
                          dynamic_shapes=(tuple(_dynamic(k, batch[k].shape) for k in keys),), verbose=False)
    return path


class OnnxEmbedder:
    """Fused embeddings from an exported graph on onnxruntime (CPU), preprocessing by `predictor`."""

    def __init__(self, predictor: Predictor, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.predictor = predictor
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def _run(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = Collator(self.predictor.preprocessors)(samples)
        feed = {k: batch[k].numpy() for k in self.inputs}
        return {"fused": torch.from_numpy(self.session.run(None, feed)[0])}

    def embed(self, records: Iterable[dict[str, Any]], normalize: bool = False) -> np.ndarray:
        """(N, D) fused embeddings in input order, as `Predictor.embed` returns them."""
        p = self.predictor
        parts = []
        for start, window in windows(records, p.batch_size * p.sort_window_batches):
            samples = [p.prepare(r, start + i) for i, r in enumerate(window)]
            order = length_order(samples)
            out = torch.empty(len(samples), p.dim)
            for b in range(0, len(order), p.batch_size):
                picked = order[b:b + p.batch_size]
                out[torch.tensor(picked)] = self._run([samples[i] for i in picked])["fused"]
            parts.append(out)
        emb = torch.cat(parts) if parts else torch.zeros(0, p.dim)
        return (torch.nn.functional.normalize(emb, dim=-1) if normalize else emb).numpy()
