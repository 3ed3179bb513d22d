"""Serving backends in the bench: bf16, int8 and onnx `Embedder`s of one fp32 model, timed against it with their
cosine parity, and the `embed-backends` case.

Beside the backends, two int8 candidates that are measured, not offered (their parity decides): `int8-all`, PyTorch
dynamic int8 on every encoder linear layer (per-channel weights), and `onnx-int8`, onnxruntime's dynamic int8
(`quantize_dynamic`, per-channel QInt8 weights) on every MatMul of the exported graph.

    embed-backends  `Embedder.embed` (decode + collate + model) on raw demo records with the demo model: fp32
                    (series `mmfuse`) vs the others, interleaved; ratios and cosine to fp32 in the result

The `text-embed` case (`textembed.py`) runs the same backends on all-MiniLM-L6-v2 against sentence-transformers.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from ..data.loader import read_records
from ..inference import Embedder
from ..serving import cosine_parity, quantize_int8
from .common import case_model, case_result
from .presets import CaseSpec
from .timing import PeakMemory, interleaved, paired_ratio


def backend_embedders(fp32: Embedder, folder: Path) -> tuple[dict[str, Embedder], dict[str, Any]]:
    """({'bf16': ..., 'int8': ..., 'int8-all': ..., 'onnx': ..., 'onnx-int8': ...}, notes): the other backends of
    `fp32`'s model (bf16 only off the CPU), ONNX graphs written to `folder`. Notes say which backend was skipped and
    why, and which operators onnxruntime fused."""
    def make(model: Any = None, **kwargs: Any) -> Embedder:
        return Embedder(fp32.model if model is None else model, fp32.device, fp32.batch_size, **kwargs)

    others = {"bf16": make(backend="bf16")}
    if fp32.device.type != "cpu":
        return others, {"skipped": "the int8 and onnx backends run on the CPU only"}
    others["int8"] = make(copy.deepcopy(fp32.model), backend="int8")
    others["int8-all"] = make(quantize_int8(fp32.model, scope="all"))
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        from ..onnx_export import export_onnx
    except ImportError as err:
        return others, {"skipped": f"onnx: {err.name} is not installed (pip install 'mmfuse[onnx]')"}
    path = export_onnx(fp32.model, fp32.preprocessors, folder / "embedder.onnx", fp32.fingerprint())
    others["onnx"] = make(backend="onnx", onnx_file=path)
    quantized = folder / "embedder-int8.onnx"
    with _quiet():
        quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # fused ops have no types
    others["onnx-int8"] = make(backend="onnx", onnx_file=quantized)  # the graph keeps the fp32 fingerprint
    return others, {"onnx_fused_ops": others["onnx"].session.fused_ops}


@contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's quantiser logs a pre-processing hint at WARNING on every call."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def compare(fp32_vectors: np.ndarray, others: dict[str, np.ndarray], reference: str = "mmfuse") -> dict[str, Any]:
    """Cosine parity of each backend's vectors to fp32's: {'<backend>_vs_mmfuse': {min, mean, n}}."""
    return {f"{name}_vs_{reference}": cosine_parity(vectors, fp32_vectors) for name, vectors in others.items()}


def run_embed_backends(ctx: Any, spec: CaseSpec) -> dict[str, Any]:
    """`Embedder.embed` of the case's model on raw records: fp32 vs int8 vs onnx, with cosine parity to fp32."""
    fp32 = Embedder(case_model(ctx, spec), ctx.device, batch_size=spec.batch_size)
    records = list(islice(read_records(ctx.info, ctx.split), 4 * spec.batch_size))
    with tempfile.TemporaryDirectory() as tmp:
        others, notes = backend_embedders(fp32, Path(tmp))
        reference = fp32.embed(records, normalize=True)
        parity = compare(reference, {n: p.embed(records, normalize=True) for n, p in others.items()})
        workloads = {"mmfuse": lambda: len(fp32.embed(records)),
                     **{n: (lambda p=p: len(p.embed(records))) for n, p in others.items()}}
        with PeakMemory(ctx.device) as memory:
            rates = interleaved(workloads, ctx.device, ctx.cfg.repeats, ctx.cfg.warmup)
    ratios = {f"{n}/mmfuse": paired_ratio(rates[0][n], rates[0]["mmfuse"]) for n in others}
    return case_result(spec, rates, 1, samples_per_repeat=len(records), parity=parity, ratios=ratios, backends=notes,
                       weights=f"random-init {spec.towers} towers",
                       memory={"kind": memory.kind, "bytes": memory.bytes})
