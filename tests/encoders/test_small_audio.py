"""`logmel-stats` and `small-cnn-audio`: token counts and masks, the running standardisation, learning a small
spoken-word set, and both through the CLI with a token fusion and a pooled one."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from mmfuse.cli import main
from mmfuse.data.batch import Collator
from mmfuse.data.demo_words import spoken_words, word_inventory
from mmfuse.encoders import create_encoder
from mmfuse.encoders.small_audio import RunningStandardize, masked_delta
from mmfuse.model_config import EncoderSpec, ModelConfig
from mmfuse.tasks import create_model_and_task

TOWERS = ["logmel-stats", "small-cnn-audio"]


def clips() -> list:
    """0.5 s, 0.25 s at 8 kHz (resampled), absent."""
    rng = np.random.default_rng(0)
    return [(rng.normal(0, 0.1, 8000).astype(np.float32), 16_000),
            (rng.normal(0, 0.1, 2000).astype(np.float32), 8000), None]


@pytest.mark.parametrize("name, kwargs, per_token", [("logmel-stats", {"token_stride": 4}, 4),
                                                     ("logmel-stats", {"token_stride": 1}, 1),
                                                     ("small-cnn-audio", {"layers": 2}, 4)])
def test_tokens_follow_time_and_mask_padding_and_absent_clips(name, kwargs, per_token):
    encoder = create_encoder(name, width=16, **kwargs).eval()
    pre = encoder.preprocessor
    batch = pre.collate([pre.transform(c) for c in clips()])
    frames = batch["audio_mask"].sum(1).tolist()  # 48, 23, 0 log-mel frames
    out = encoder(batch)
    assert out.tokens.shape == (3, math.ceil(batch["audio"].shape[1] / per_token), 16)
    assert out.mask.sum(1).tolist() == [math.ceil(f / per_token) for f in frames]
    assert not out.mask[2].any() and torch.isfinite(out.tokens).all() and torch.isfinite(out.pooled).all()
    assert encoder.pretrained is False and create_encoder(name, pretrained=True).pretrained is False


def test_delta_repeats_the_clip_edges_and_never_reads_padding():
    frames = torch.tensor([[[1.0], [3.0], [7.0], [100.0]]])  # the last frame is padding
    mask = torch.tensor([[True, True, True, False]])
    torch.testing.assert_close(masked_delta(frames, mask).squeeze(), torch.tensor([1.0, 3.0, 2.0, 0.0]))


def test_running_standardize_learns_in_training_only_and_takes_a_batch_of_one():
    norm = RunningStandardize(2)
    x = torch.tensor([[1.0, 10.0], [3.0, 30.0], [1e6, 1e6]])
    rows = torch.tensor([True, True, False])  # the absent row does not count
    out = norm.train()(x, rows)
    torch.testing.assert_close(norm.mean, torch.tensor([2.0, 20.0]))
    torch.testing.assert_close(out[:2], torch.tensor([[-1.0, -1.0], [1.0, 1.0]]), atol=1e-4, rtol=0)
    norm(x[:1], rows[:1])  # one clip: the mean moves, the spread is kept
    torch.testing.assert_close(norm.var, torch.tensor([1.0, 100.0]))
    before = norm.mean.clone()
    norm.eval()(x, rows)
    torch.testing.assert_close(norm.mean, before)


def test_logmel_stats_statistics_path_is_the_same_in_any_batch_in_eval():
    encoder = create_encoder("logmel-stats", width=16)
    pre = encoder.preprocessor
    waves, _ = spoken_words(2, classes=2, seed=3)
    encoder.train()(pre.collate([pre.transform((w, 16_000)) for w in waves]))  # fills the running statistics
    encoder.eval()
    alone = encoder(pre.collate([pre.transform((waves[0], 16_000))])).pooled
    together = encoder(pre.collate([*(pre.transform((w, 16_000)) for w in waves), None])).pooled
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=1e-4)


def test_spoken_words_are_distinct_seeded_words():
    words = word_inventory(12)
    assert len({tuple(sorted(w)) for w in words}) == 12
    waves, labels = spoken_words(3, classes=4, seed=0)
    assert sorted(labels) == [k for k in range(4) for _ in range(3)]
    assert all(w.shape == (16_000,) and w.dtype == np.float32 and np.abs(w).max() <= 1 for w in waves)
    again, _ = spoken_words(3, classes=4, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(waves, again, strict=True))
    other, _ = spoken_words(3, classes=4, seed=1)
    assert not np.array_equal(waves[0], other[0])


def train_audio_classifier(name: str, kwargs: dict, train: tuple, test: tuple, classes: int, epochs: int) -> float:
    """A one-modality classifier with tower `name`, trained with AdamW on `train`; accuracy on held-out `test`."""
    torch.manual_seed(0)
    config = ModelConfig(modalities=["audio"], encoders={"audio": EncoderSpec(name, kwargs, pretrained=False)},
                         labels=[str(k) for k in range(classes)], dim=32)
    model, task = create_model_and_task(config)
    pre = model.preprocessors()["audio"]

    def samples(waves, labels):
        return [{"key": str(i), "label": y, "audio": pre.transform((w, 16_000))}
                for i, (w, y) in enumerate(zip(waves, labels, strict=True))]

    train_set, test_set = samples(*train), samples(*test)
    collate = Collator(model.preprocessors())
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    order = random.Random(0)
    model.train()
    for _ in range(epochs):
        order.shuffle(train_set)
        for start in range(0, len(train_set), 16):
            batch = collate(train_set[start: start + 16])
            loss = task.loss(model(batch, outputs=True), batch)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
    model.eval()
    with torch.no_grad():
        batch = collate(test_set)
        return (model(batch).argmax(-1) == batch["label"]).float().mean().item()


@pytest.mark.slow  # trains a classifier for 4 epochs
def test_logmel_stats_learns_held_out_spoken_words_in_a_few_epochs():
    """Six words, 16 clips each to train on, other speakers and timings to test on: clearly above chance (1/6)."""
    classes = 6
    train, test = spoken_words(16, classes, seed=0), spoken_words(8, classes, seed=1)
    accuracy = train_audio_classifier("logmel-stats", {"width": 32, "hidden": 64, "max_seconds": 1.0},
                                      train, test, classes, epochs=4)
    assert accuracy > 0.6, accuracy


@pytest.mark.parametrize("tower, fusion", [("logmel-stats", "cross-attention"), ("small-cnn-audio", "interact")])
def test_cli_finetunes_with_the_tower(tower, fusion, demo_shards, tmp_path):
    """`mmfuse finetune --audio-encoder NAME` on the demo shards (audio partly absent there), then predict."""
    import mmfuse
    from mmfuse.data.info import DatasetInfo
    from mmfuse.data.loader import read_records

    run = tmp_path / "run"
    code = main(["finetune", "--data", str(demo_shards), "--out", str(run), "--epochs", "1", "--max-steps", "2",
                 "--batch-size", "16", "--no-progress", "--modalities", "image,audio", "--fusion", fusion,
                 "--audio-encoder", tower, "--set", "model.encoders.audio.kwargs={width: 16, layers: 1}",
                 "--set", "model.encoders.image.kwargs={width: 16, layers: 1, heads: 2, image_size: 32, "
                          "patch_size: 8}", "--set", "model.dim=16"])
    assert code == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["fusion"] == fusion and metrics["test"]["count"] == 40
    predictor = mmfuse.load(run)
    record = next(read_records(DatasetInfo.load(demo_shards), "test"))
    without_audio = {k: v for k, v in record.items() if k != "audio"}
    proba = predictor.predict_proba([record, without_audio])
    assert np.isfinite(proba).all() and np.allclose(proba.sum(1), 1, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("tower, fusion", [("logmel-stats", "interact"), ("small-cnn-audio", "cross-attention")])
def test_onnx_export_embeds_like_pytorch(tower, fusion, tmp_path):
    """The towers trace with dynamic audio-frame axes: clips of other lengths, and absent ones, embed as in torch."""
    pytest.importorskip("onnxruntime")
    from mmfuse.inference import Embedder
    from mmfuse.onnx_export import export_onnx, parity_records

    config = ModelConfig(modalities=["text", "audio"], fusion=fusion, dim=16, labels=["a", "b"],
                         encoders={"text": EncoderSpec("tiny-text", {"width": 16, "layers": 1}),
                                   "audio": EncoderSpec(tower, {"width": 16, "layers": 1})})
    model = create_model_and_task(config)[0].eval()
    path = export_onnx(model, model.preprocessors(), tmp_path / "model.onnx")
    records = parity_records(["text", "audio"], count=12) + [{"text": "no audio"}]
    torch_side = Embedder(model, torch.device("cpu"), batch_size=5)
    onnx_side = Embedder(model, torch.device("cpu"), batch_size=5, backend="onnx", onnx_file=path)
    np.testing.assert_allclose(onnx_side.embed(records), torch_side.embed(records), atol=1e-4)
