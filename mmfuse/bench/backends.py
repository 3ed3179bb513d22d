"""Serving backends in the bench: int8 and onnx `Predictor`s of one fp32 model, timed against it with their cosine
parity, and the `embed-backends` case.

    embed-backends  `Predictor.embed` (decode + collate + model) on raw demo records with the demo model: fp32
                    (series `mmfuse`) vs `int8` vs `onnx`, interleaved; ratios and cosine to fp32 in the result

The `text-embed` case (`textembed.py`) runs the same backends on all-MiniLM-L6-v2 against sentence-transformers.
"""

from __future__ import annotations

import copy
import tempfile
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from ..data.loader import read_records
from ..inference import Predictor
from ..model import ModelConfig
from ..serving import cosine_parity
from .presets import CaseSpec
from .timing import PeakMemory, interleaved, paired_ratio


def backend_predictors(fp32: Predictor, folder: Path) -> tuple[dict[str, Predictor], dict[str, Any]]:
    """({'int8': ..., 'onnx': ...}, notes): the other CPU backends of `fp32`'s model, the ONNX graph written to
    `folder`. Notes say which backend was skipped and why, and which operators onnxruntime fused."""
    if fp32.device.type != "cpu":
        return {}, {"skipped": "the int8 and onnx backends run on the CPU only"}
    others = {"int8": Predictor(copy.deepcopy(fp32.model), fp32.config, fp32.device, fp32.batch_size,
                                trained=fp32.trained, backend="int8")}
    try:
        from ..onnx_export import export_onnx
    except ImportError as err:
        return others, {"skipped": f"onnx: {err.name} is not installed (pip install 'mmfuse[onnx]')"}
    path = export_onnx(fp32, folder / "embedder.onnx")
    others["onnx"] = Predictor(fp32.model, fp32.config, fp32.device, fp32.batch_size, trained=fp32.trained,
                               backend="onnx", onnx_file=path)
    return others, {"onnx_fused_ops": others["onnx"].session.fused_ops}


def compare(fp32_vectors: np.ndarray, others: dict[str, np.ndarray], reference: str = "mmfuse") -> dict[str, Any]:
    """Cosine parity of each backend's vectors to fp32's: {'<backend>_vs_mmfuse': {min, mean, n}}."""
    return {f"{name}_vs_{reference}": cosine_parity(vectors, fp32_vectors) for name, vectors in others.items()}


def run_embed_backends(ctx: Any, spec: CaseSpec) -> dict[str, Any]:
    """`Predictor.embed` of the case's model on raw records: fp32 vs int8 vs onnx, with cosine parity to fp32."""
    from .cases import _model, _result

    config = ModelConfig(list(spec.modalities), spec.encoders(), labels=list(ctx.info.labels), fusion=spec.fusion)
    fp32 = Predictor(_model(ctx, spec), config, ctx.device, batch_size=spec.batch_size)
    records = list(islice(read_records(ctx.info, ctx.split), 4 * spec.batch_size))
    with tempfile.TemporaryDirectory() as tmp:
        others, notes = backend_predictors(fp32, Path(tmp))
        reference = fp32.embed(records, normalize=True)
        parity = compare(reference, {n: p.embed(records, normalize=True) for n, p in others.items()})
        workloads = {"mmfuse": lambda: len(fp32.embed(records)),
                     **{n: (lambda p=p: len(p.embed(records))) for n, p in others.items()}}
        with PeakMemory(ctx.device) as memory:
            rates = interleaved(workloads, ctx.device, ctx.cfg.repeats, ctx.cfg.warmup)
    ratios = {f"{n}/mmfuse": paired_ratio(rates[0][n], rates[0]["mmfuse"]) for n in others}
    return _result(spec, rates, 1, samples_per_repeat=len(records), parity=parity, ratios=ratios, backends=notes,
                   weights=f"random-init {spec.towers} towers",
                   memory={"kind": memory.kind, "bytes": memory.bytes})
