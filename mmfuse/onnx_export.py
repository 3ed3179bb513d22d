"""ONNX export of the embedder and the onnxruntime session behind `mmfuse.load(..., backend="onnx")`. Batch, token
and audio-frame axes are dynamic. Needs `onnx` and `onnxruntime` (the `onnx` extra).

The graph is traced by the TorchScript exporter (`torch.onnx.export(dynamo=False)`, Hugging Face attention switched
to its eager form while tracing) and then rewritten by onnxruntime's transformer optimizer
(`optimize_model(model_type="bert")`), which fuses embeddings + LayerNorm, attention, bias + GELU and residual +
LayerNorm into single CPU kernels: on all-MiniLM-L6-v2 the fused graph is ~1.3x the unfused one (the dynamo exporter's
graph does not match the attention patterns). Parity with PyTorch is checked by `mmfuse export-onnx` and the tests.

The graph takes the collated batch's tensors (sorted by key) and returns `fused` (B, D) and, per modality m,
`m_projected` (B, D) -- its pooled vector projected to D -- and `m_pooled` (B, W) -- its encoder's own pooled vector.
The model's fingerprint is stored in the file's metadata: a graph only ever runs for the weights it came from.

    embedder = mmfuse.load("runs/mine")
    path = export_onnx(embedder.model, embedder.preprocessors, "embedder.onnx")  # or: mmfuse export-onnx
    mmfuse.load("runs/mine", backend="onnx", onnx_file=path).embed(records)   # or let backend="onnx" export it
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime  # noqa: F401 - fail at import when the optional extra is missing
import torch

from .data.batch import Collator
from .errors import ConfigError
from .fingerprint import weights_fingerprint

if TYPE_CHECKING:
    from .encoders.base import Preprocessor
    from .model import FusionModel

FINGERPRINT_KEY = "mmfuse_fingerprint"
EXPORT_VERSION = 2
"""Bump when `export_onnx` makes a different graph: cached graphs of older versions are then exported again."""
FUSED_KEY = "mmfuse_fused_ops"
GRAPH_FILE = "embedder.onnx"


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


def output_names(modalities: list[str]) -> list[str]:
    """The graph's outputs: fused, then per modality (sorted) its projected and its raw pooled vector."""
    return ["fused", *(name for m in modalities for name in (f"{m}_projected", f"{m}_pooled"))]


class _Graph(torch.nn.Module):
    """The model's embedding path with positional tensor inputs (ONNX has no dict inputs)."""

    def __init__(self, model: torch.nn.Module, keys: list[str]) -> None:
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch = dict(zip(self.keys, tensors, strict=True))
        outputs = {m: self.model.encoders[m](batch) for m in self.model.modalities}
        features = self.model.encode({**batch, **{f"cached_{m}_{k}": getattr(o, k) for m, o in outputs.items()
                                                  for k in ("pooled", "tokens", "mask")}})
        per_modality = [t for m in self.model.modalities for t in (features[m].pooled, outputs[m].pooled)]
        return (self.model.fusion(features), *per_modality)  # (B, D), then (B, D) and (B, W) per modality


def _dynamic_axes(key: str, tensor: torch.Tensor) -> dict[int, str]:
    if key in ("text_ids", "text_mask"):
        return {0: "batch", 1: "tokens"}
    if key in ("audio", "audio_mask") and tensor.dim() >= 2:
        return {0: "batch", 1: "frames"}
    return {0: "batch"}


@contextlib.contextmanager
def _eager_attention(model: torch.nn.Module):
    """Hugging Face backbones traced with eager attention (the pattern onnxruntime's optimizer fuses), then restored."""
    switched = []
    for module in model.modules():
        config = getattr(module, "config", None)
        if hasattr(module, "set_attn_implementation") and getattr(config, "_attn_implementation", None) == "sdpa":
            module.set_attn_implementation("eager")
            switched.append(module)
    try:
        yield
    finally:
        for module in switched:
            module.set_attn_implementation("sdpa")


def _optimize(path: Path, model: FusionModel) -> tuple[Any, dict[str, int]]:
    """onnxruntime's transformer fusions on the graph at `path`: (the ModelProto, {fused op: count})."""
    from onnxruntime.transformers.optimizer import optimize_model

    text = model.encoders["text"] if "text" in model.encoders else None
    config = getattr(getattr(text, "backbone", None), "config", None)  # BERT-family text towers: their shape
    heads, width = getattr(config, "num_attention_heads", 0), getattr(config, "hidden_size", 0)
    logging.disable(logging.WARNING)  # the optimizer logs every pattern it does not find
    try:
        optimized = optimize_model(str(path), model_type="bert", num_heads=heads, hidden_size=width)
    finally:
        logging.disable(logging.NOTSET)
    stats = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    return optimized.model, stats


def _check_fp32(model: FusionModel) -> None:
    """The onnx backend's graph is of the fp32 model: a bf16 or int8 (quantised) copy is refused."""
    quantized = any(".quantized" in type(m).__module__ for m in model.modules())
    if quantized or any(p.dtype != torch.float32 for p in model.parameters()):
        raise ConfigError("export the fp32 model to ONNX (load it with backend='fp32')")


def _example_batch(preprocessors: Mapping[str, Preprocessor]) -> dict[str, Any]:
    """`_example_records` prepared by `preprocessors` and collated: the tensors the graph is traced with."""
    samples = []
    for i, record in enumerate(_example_records(sorted(preprocessors))):
        samples.append({"key": str(i), **{m: pre.transform(record.get(m)) for m, pre in preprocessors.items()}})
    return Collator(dict(preprocessors))(samples)


def export_onnx(model: FusionModel, preprocessors: Mapping[str, Preprocessor], path: str | Path,
                fingerprint: str | None = None) -> Path:
    """Write the embedder of `model` (fp32, on the CPU), fed by `preprocessors` (`model.preprocessors()`), to `path`
    as ONNX, fused for the CPU, with the weights' fingerprint (`weights_fingerprint(model)` unless given) in the
    metadata; returns the path."""
    _check_fp32(model)
    batch = _example_batch(preprocessors)
    keys = sorted(k for k, v in batch.items() if isinstance(v, torch.Tensor))
    names = output_names(model.modalities)
    axes = {**{k: _dynamic_axes(k, batch[k]) for k in keys}, **{n: {0: "batch"} for n in names}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = _Graph(model, keys).eval()
    with _eager_attention(model), warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, tuple(batch[k] for k in keys), str(path), dynamo=False, input_names=keys,
                          output_names=names, dynamic_axes=axes, opset_version=17)
    proto, fused = _optimize(path, model)
    fingerprint = fingerprint or weights_fingerprint(model)
    onnx.helper.set_model_props(proto, {FINGERPRINT_KEY: fingerprint, FUSED_KEY: json.dumps(fused)})
    onnx.save(proto, str(path))
    return path


def export_key(fingerprint: str) -> str:
    """What a cached graph depends on, hashed: the weights' `fingerprint` and how the graph was made (this module's
    `EXPORT_VERSION`, torch's exporter, onnxruntime's fusions)."""

    made_by = f"{EXPORT_VERSION}:{torch.__version__}:{onnxruntime.__version__}"
    return hashlib.sha256(f"{fingerprint}:{made_by}".encode()).hexdigest()[:32]


def cached_export(model: FusionModel, preprocessors: Mapping[str, Preprocessor], fingerprint: str | None = None,
                  cache: Path | None = None) -> Path:
    """The ONNX graph of `model` in the cache (`<mmfuse cache>/onnx/<key>/`, keyed by its weights' fingerprint --
    `weights_fingerprint(model)` unless given -- and the exporter's versions), exported on first use."""
    from .data.demo import cache_dir

    fingerprint = fingerprint or weights_fingerprint(model)
    folder = (cache or cache_dir() / "onnx") / export_key(fingerprint)
    if (folder / GRAPH_FILE).is_file():
        return folder / GRAPH_FILE
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=folder.parent))
    except OSError as err:
        raise ConfigError(f"cannot write the ONNX cache {folder.parent}: {err.strerror} (set MMFUSE_CACHE to a "
                          f"writable directory, or pass onnx_file=)") from None
    try:
        export_onnx(model, preprocessors, tmp / GRAPH_FILE, fingerprint)
        os.replace(tmp, folder)  # atomic: a concurrent exporter of the same model leaves an identical folder
    except OSError:
        if not (folder / GRAPH_FILE).is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / GRAPH_FILE


class OnnxSession:
    """An onnxruntime CPU session over an exported embedder; `run` is safe to call from several threads."""

    def __init__(self, path: str | Path, fingerprint: str, modalities: list[str], threads: int | None = None) -> None:
        import onnxruntime as ort

        if not Path(path).is_file():
            raise ConfigError(f"ONNX file {path} does not exist (write one with mmfuse export-onnx)")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types for unreadable graphs
            raise ConfigError(f"cannot load ONNX file {path}: {str(err).splitlines()[0][:200]}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        stored = meta.get(FINGERPRINT_KEY)
        if stored != fingerprint:
            raise ConfigError(f"ONNX file {path} was exported from other weights (fingerprint {stored or 'none'}, "
                              f"this model {fingerprint[:16]}...); export it again with mmfuse export-onnx")
        expected = output_names(modalities)
        found = [o.name for o in self.session.get_outputs()]
        if found != expected:
            raise ConfigError(f"ONNX file {path} has outputs {', '.join(found)}, expected {', '.join(expected)}; "
                              f"export it again with this mmfuse")
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.path = Path(path)
        self.fused_ops: dict[str, int] = json.loads(meta.get(FUSED_KEY, "{}"))
        """Operators onnxruntime's transformer optimizer fused at export, e.g. {'Attention': 6, ...}."""

    def run(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Collated batch (CPU tensors) -> {output name: tensor} (see `output_names`)."""
        missing = [k for k in self.inputs if k not in batch]
        if missing:
            raise ConfigError(f"ONNX graph {self.path} needs inputs {', '.join(missing)} the batch lacks")
        feed = {k: batch[k].numpy() for k in self.inputs}
        names = [o.name for o in self.session.get_outputs()]
        return {n: torch.from_numpy(v) for n, v in zip(names, self.session.run(names, feed), strict=True)}
