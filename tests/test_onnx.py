"""ONNX: `mmfuse export-onnx` and the onnx backend (`mmfuse.load(..., backend="onnx")`, `mmfuse embed --backend
onnx`) agree with PyTorch (cosine >= 0.99, and within 1e-4) on batches whose sizes, text lengths and present
modalities differ from the traced example; the graph is cached by fingerprint and refused for other weights; the
export takes a bare model and its preprocessors."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import mmfuse
from mmfuse.cli import main
from mmfuse.errors import ConfigError
from mmfuse.onnx_export import export_key
from mmfuse.serving import check_backend, cosine_parity

TEXT_IMAGE = {"modalities": ["text", "image"], "dim": 16, "encoders": {
    "text": {"name": "tiny-text", "kwargs": {"width": 16, "layers": 1, "heads": 2}},
    "image": {"name": "tiny-image", "kwargs": {"width": 16, "layers": 1, "heads": 2, "image_size": 32}}}}
PRESET = "tiny_bottleneck"


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """MMFUSE_CACHE in a temp dir holding the cached export of PRESET (made once, by the first onnx load)."""
    pytest.importorskip("onnxruntime")
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMFUSE_CACHE", str(cache))
        mmfuse.load(PRESET, backend="onnx")
        yield cache


def sample_records(modalities: list[str]) -> list[dict]:
    from mmfuse.onnx_export import parity_records

    records = parity_records(modalities, count=23) + [{}]
    return records + [{"audio": r["audio"]} for r in parity_records(modalities, count=6) if "audio" in r]


@pytest.mark.slow
def test_onnx_backend_embeds_like_pytorch_and_caches_its_export(onnx_cache):
    graphs = list(onnx_cache.glob("onnx/*/embedder.onnx"))
    assert len(graphs) == 1
    stamp = graphs[0].stat().st_mtime_ns
    fp32, onnx = mmfuse.load(PRESET, batch_size=5), mmfuse.load(PRESET, batch_size=5, backend="onnx")
    assert onnx.backend == "onnx" and onnx.fingerprint() == fp32.fingerprint()
    assert onnx._onnx.fused_ops["Attention"] >= 1 and onnx._onnx.fused_ops["SkipLayerNormalization"] >= 1
    assert graphs[0].stat().st_mtime_ns == stamp and graphs[0].parent.name == export_key(fp32.fingerprint())  # reused
    records = sample_records(fp32.modalities)
    ours, theirs = fp32.embed_modalities(records), onnx.embed_modalities(records)
    assert set(ours) == set(theirs)
    for name in ("fused", "text", "image", "audio"):
        assert cosine_parity(ours[name], theirs[name])["min"] >= 0.99
        np.testing.assert_allclose(theirs[name], ours[name], atol=1e-4)
        np.testing.assert_array_equal(theirs[f"present_{name}"], ours[f"present_{name}"]) if name != "fused" else None
    assert not theirs["present_audio"].all() and (theirs["audio"][~theirs["present_audio"]] == 0).all()
    np.testing.assert_allclose(onnx.encode(records, "text", normalize=True), fp32.encode(records, "text",
                                                                                         normalize=True), atol=1e-4)
    subset = onnx.embed(records, modalities="text,image", normalize=True)
    np.testing.assert_allclose(subset, fp32.embed(records, modalities="text,image", normalize=True), atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(subset, axis=1), 1.0, atol=1e-5)
    with ThreadPoolExecutor(4) as pool:  # one session shared by threads: same vectors as one call
        chunks = list(pool.map(lambda i: onnx.embed(records[i::4]), range(4)))
    for i, chunk in enumerate(chunks):
        np.testing.assert_allclose(chunk, theirs["fused"][i::4], atol=1e-5)


@pytest.mark.slow
def test_embed_cli_onnx_backend(onnx_cache, demo_shards, tmp_path):
    out = tmp_path / "onnx"
    assert main(["embed", "--run", PRESET, "--shards", str(demo_shards), "--splits", "val", "--backend", "onnx",
                 "--out", str(out), "--no-progress"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["model"]["backend"] == "onnx" and meta["counts"]["exported"] == 32
    assert main(["embed", "--run", PRESET, "--shards", str(demo_shards), "--splits", "val", "--out",
                 str(tmp_path / "fp32"), "--no-progress"]) == 0
    np.testing.assert_allclose(np.load(out / "fused_feat.npy"), np.load(tmp_path / "fp32" / "fused_feat.npy"),
                               atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["text_image", PRESET])
def test_exported_graph_matches_pytorch(tmp_path, capsys, preset):
    pytest.importorskip("onnxruntime")
    other = PRESET
    if preset == "text_image":
        preset = str(tmp_path / "text_image.json")
        (tmp_path / "text_image.json").write_text(json.dumps(TEXT_IMAGE))
    else:
        other = str(tmp_path / "other.json")  # same architecture, other weights
        (tmp_path / "other.json").write_text(json.dumps({**TEXT_IMAGE, "dim": 8}))
    out = tmp_path / "embedder.onnx"
    assert main(["export-onnx", "--run", preset, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    found = re.search(rf"wrote {re.escape(str(out))}; cosine to PyTorch on 16 sample records: min ([0-9.]+)", printed)
    assert found and float(found.group(1)) >= 0.99
    predictor = mmfuse.load(preset, batch_size=5)
    onnx = mmfuse.load(preset, batch_size=5, backend="onnx", onnx_file=out)
    records = sample_records(predictor.modalities)
    ours, theirs = predictor.embed(records, normalize=True), onnx.embed(records, normalize=True)
    assert cosine_parity(ours, theirs)["min"] >= 0.99
    np.testing.assert_allclose(theirs, ours, atol=1e-4)
    with pytest.raises(ConfigError, match="was exported from other weights"):
        mmfuse.load(other, backend="onnx", onnx_file=out)


@pytest.mark.slow
def test_export_takes_a_bare_model_and_its_preprocessors(tmp_path):
    """No Embedder needed to export: a model from `build_model` (head and all) and its preprocessors; the graph
    carries the weights' fingerprint and embeds as the Embedder of that model does."""
    pytest.importorskip("onnxruntime")
    from mmfuse.fingerprint import weights_fingerprint
    from mmfuse.inference import Embedder
    from mmfuse.model import ModelConfig
    from mmfuse.onnx_export import OnnxSession, export_onnx, output_names
    from mmfuse.tasks import create_model_and_task

    model = create_model_and_task(ModelConfig(**{**TEXT_IMAGE, "labels": ["a", "b"]}))[0].eval()  # with a head
    path = export_onnx(model, model.preprocessors(), tmp_path / "bare.onnx")
    session = OnnxSession(path, weights_fingerprint(model), model.modalities)
    assert [o.name for o in session.session.get_outputs()] == output_names(["image", "text"])
    fp32 = Embedder(model, torch.device("cpu"), batch_size=5)
    onnx = Embedder(model, torch.device("cpu"), batch_size=5, backend="onnx", onnx_file=path)
    assert onnx.fingerprint() == fp32.fingerprint() == weights_fingerprint(model)
    records = sample_records(fp32.modalities)
    np.testing.assert_allclose(onnx.embed(records), fp32.embed(records), atol=1e-4)


def test_export_refuses_a_bf16_or_int8_model(tmp_path):
    pytest.importorskip("onnxruntime")
    from mmfuse.onnx_export import export_onnx

    for backend in ("bf16", "int8"):
        embedder = mmfuse.load(PRESET, backend=backend)
        with pytest.raises(ConfigError, match="export the fp32 model to ONNX"):
            export_onnx(embedder.model, embedder.preprocessors, tmp_path / f"{backend}.onnx")
    assert not list(tmp_path.iterdir())


def test_onnx_backend_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="the onnx backend runs on the CPU only"):
        check_backend("onnx", torch.device("cuda"))
    with pytest.raises(ConfigError, match="onnx_file is read by backend='onnx' only"):
        mmfuse.load(PRESET, onnx_file=tmp_path / "x.onnx")
    if importlib.util.find_spec("onnxruntime") is not None:
        with pytest.raises(ConfigError, match="ONNX file .*x.onnx does not exist"):
            mmfuse.load(PRESET, backend="onnx", onnx_file=tmp_path / "x.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the optional extra were not installed
    monkeypatch.delitem(sys.modules, "mmfuse.onnx_export", raising=False)
    with pytest.raises(ConfigError, match=r"the onnx backend needs onnxruntime and onnx \(onnxruntime "
                                          r"is missing\): pip install 'mmfuse\[onnx\]'"):
        mmfuse.load(PRESET, backend="onnx")
