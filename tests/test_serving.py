"""CPU serving: the int8 backend (parity to fp32 on tiny models and on real all-MiniLM-L6-v2 weights), raw encoder
vectors equal to sentence-transformers' on the same weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mmfuse
from mmfuse.errors import ConfigError
from mmfuse.serving import attention_linears, cosine_parity

SENTENCES = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today.",
             "Share prices dropped on the exchange.", "a sturdy oak toy with round corners", "steel",
             "An old walnut chest of drawers, carved by hand, with brass handles and a deep lower drawer."]


def minilm_preset(tmp_path) -> str:
    from test_pretrained import minilm_dir

    path = tmp_path / "minilm_text.json"
    path.write_text(json.dumps({"modalities": ["text"], "dim": 64, "encoders": {"text": {
        "name": "hf-text", "kwargs": {"model": str(minilm_dir()), "pooling": "mean", "max_length": 256}}}}))
    return str(path)


def test_int8_quantises_attention_only_and_keeps_parity(demo_shards):
    from mmfuse.data.info import DatasetInfo
    from mmfuse.data.loader import read_records

    records = list(read_records(DatasetInfo.load(demo_shards), "test"))
    fp32, int8 = mmfuse.load("tiny_bottleneck"), mmfuse.load("tiny_bottleneck", backend="int8")
    quantized = {n for n, m in int8.model.named_modules() if type(m).__name__ == "Linear"
                 and type(m).__module__.startswith("torch.ao.nn.quantized")}
    assert quantized == attention_linears(fp32.model) and len(quantized) == 8
    assert int8.fingerprint() == fp32.fingerprint() and int8.backend == "int8"
    a, b = fp32.embed_modalities(records), int8.embed_modalities(records)
    for name in ("fused", "text", "image", "audio"):
        assert cosine_parity(a[name], b[name])["min"] >= 0.99
    assert not np.array_equal(a["text"], b["text"])  # it did run other kernels


def test_cosine_parity_and_bad_backends():
    a = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    parity = cosine_parity(a, np.array([[2.0, 0.0], [0.0, 0.0], [1.0, -1.0]]))
    assert parity == {"min": 0.0, "mean": pytest.approx(2 / 3), "n": 3}
    with pytest.raises(ConfigError, match="unknown backend 'fp8'; choose from fp32, bf16, int8, onnx, auto"):
        mmfuse.load("tiny_bottleneck", backend="fp8")


def test_bf16_backend_casts_a_copy_and_keeps_parity_on_every_modality(demo_shards):
    from mmfuse.data.info import DatasetInfo
    from mmfuse.data.loader import read_records

    records = list(read_records(DatasetInfo.load(demo_shards), "test"))
    fp32 = mmfuse.load("tiny_bottleneck")
    bf16 = mmfuse.Embedder(fp32.model, fp32.device, backend="bf16")
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in fp32.model.parameters()} == {torch.float32}  # the caller's model is left as it was
    assert bf16.fingerprint() == fp32.fingerprint() and bf16.backend == "bf16"
    a, b = fp32.embed_modalities(records), bf16.embed_modalities(records)
    for name in ("fused", "text", "image", "audio"):  # float32 out, pixels and spectrograms cast on the way in
        assert b[name].dtype == np.float32 and cosine_parity(a[name], b[name])["min"] >= 0.99
    assert not np.array_equal(a["fused"], b["fused"])


@pytest.mark.parametrize("fast", [False, True])
def test_auto_backend_picks_bf16_only_where_it_is_native(monkeypatch, fast):
    from mmfuse import precision
    from mmfuse.serving import check_backend

    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: fast)
    assert check_backend("auto", torch.device("cpu")) == ("bf16" if fast else "fp32")
    assert check_backend("auto", torch.device("cuda")) == "bf16"
    assert mmfuse.load("tiny_bottleneck", backend="auto").backend == ("bf16" if fast else "fp32")


def test_minilm_encode_matches_sentence_transformers_and_int8_parity(tmp_path):
    st_module = pytest.importorskip("sentence_transformers")
    preset = minilm_preset(tmp_path)
    from test_pretrained import minilm_dir

    records = [{"text": t} for t in SENTENCES]
    fp32 = mmfuse.load(preset, batch_size=3)
    ours = fp32.encode(records, normalize=True)
    theirs = st_module.SentenceTransformer(str(minilm_dir()), device="cpu").encode(SENTENCES, batch_size=3)
    assert ours.shape == (7, 384)
    assert cosine_parity(ours, theirs)["min"] > 0.9999
    int8 = mmfuse.load(preset, batch_size=3, backend="int8")
    assert cosine_parity(ours, int8.encode(records, normalize=True))["min"] >= 0.99
    bf16 = mmfuse.load(preset, batch_size=3, backend="bf16")
    assert cosine_parity(ours, bf16.encode(records, normalize=True))["min"] >= 0.999
    sim = torch.from_numpy(ours @ ours.T)
    assert sim[0, 1] > sim[0, 2] + 0.3  # still a sentence embedding


@pytest.mark.parametrize("backend", ["int8", "bf16", "auto"])
def test_embed_cli_backend_is_recorded(tmp_path, demo_shards, backend):
    from mmfuse.cli import main
    from mmfuse.serving import check_backend

    out = tmp_path / backend
    assert main(["embed", "--run", "tiny_bottleneck", "--shards", str(demo_shards), "--splits", "val",
                 "--modalities", "text", "--backend", backend, "--out", str(out), "--no-progress"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["model"]["backend"] == check_backend(backend, torch.device("cpu")) and meta["counts"]["exported"] == 32


@pytest.mark.slow
def test_minilm_onnx_backend_matches_sentence_transformers(tmp_path, monkeypatch):
    st_module = pytest.importorskip("sentence_transformers")
    pytest.importorskip("onnxruntime")
    from test_pretrained import minilm_dir

    monkeypatch.setenv("MMFUSE_CACHE", str(tmp_path / "cache"))
    onnx = mmfuse.load(minilm_preset(tmp_path), batch_size=3, backend="onnx")
    assert onnx._onnx.fused_ops["Attention"] == 6 and onnx._onnx.fused_ops["EmbedLayerNormalization"] == 1
    ours = onnx.encode([{"text": t} for t in SENTENCES], normalize=True)
    theirs = st_module.SentenceTransformer(str(minilm_dir()), device="cpu").encode(SENTENCES, batch_size=3)
    assert cosine_parity(ours, theirs)["min"] > 0.9999
