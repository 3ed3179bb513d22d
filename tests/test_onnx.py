"""ONNX export of the fused embedder: `mmfuse export-onnx` and `OnnxEmbedder` agree with PyTorch (cosine >= 0.99)
on batches whose sizes, text lengths and present modalities differ from the traced example."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import mmfuse
from mmfuse.cli import main
from mmfuse.serving import cosine_parity

TEXT_IMAGE = {"modalities": ["text", "image"], "dim": 16, "encoders": {
    "text": {"name": "tiny-text", "kwargs": {"width": 16, "layers": 1, "heads": 2}},
    "image": {"name": "tiny-image", "kwargs": {"width": 16, "layers": 1, "heads": 2, "image_size": 32}}}}


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["text_image", "tiny_bottleneck"])
def test_exported_graph_matches_pytorch(tmp_path, capsys, preset):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from mmfuse.onnx_export import OnnxEmbedder, parity_records

    if preset == "text_image":
        preset = str(tmp_path / "text_image.json")
        (tmp_path / "text_image.json").write_text(json.dumps(TEXT_IMAGE))
    out = tmp_path / "embedder.onnx"
    assert main(["export-onnx", "--run", preset, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    found = re.search(rf"wrote {re.escape(str(out))}; cosine to PyTorch on 16 sample records: min ([0-9.]+)", printed)
    assert found and float(found.group(1)) >= 0.99
    predictor = mmfuse.load(preset, batch_size=5)
    records = parity_records(predictor.modalities, count=23) + [{}]
    onnx = OnnxEmbedder(predictor, out)
    ours, theirs = predictor.embed(records, normalize=True), onnx.embed(records, normalize=True)
    assert cosine_parity(ours, theirs)["min"] >= 0.99
    np.testing.assert_allclose(theirs, ours, atol=1e-4)
