"""`mmfuse.load(...).embed(records)`: light import, order kept across length-sorted batches, threads, missing
modalities, modality subsets, per-modality output, every input type, presets as untrained embedders (no head, no
predict), one return type per method, and a run's `Predictor`."""

from __future__ import annotations

import io
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

import mmfuse
from mmfuse.errors import ConfigError, DataError
from mmfuse.records import length_order, windows

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["a", "a long sturdy oak toy with round corners and a smooth finish", "steel", "", "a pine block",
         "an old walnut piece carved by hand from one log", "x y", "metal"]


@pytest.fixture(scope="module")
def embedder():
    return mmfuse.load("tiny_bottleneck", batch_size=3)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("media")
    pixels = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "a.png")
    wave = (rng.standard_normal(8000) * 0.1).astype(np.float32)
    sf.write(folder / "a.wav", wave, 16_000)
    return {"png": folder / "a.png", "pixels": pixels, "wav": folder / "a.wav", "wave": wave}


def records(media) -> list[dict]:
    out = []
    for i, text in enumerate(TEXTS):
        record = {"key": f"k{i}", "text": text}
        if i % 2 == 0:
            record["image"] = str(media["png"])
        if i % 3 == 0:
            record["audio"] = str(media["wav"])
        out.append(record)
    return out


@pytest.mark.slow  # a fresh interpreter importing torch: about 10 s on 2 cores
def test_load_and_embed_do_not_import_training_modules():
    code = ("import sys, mmfuse\n"
            "e = mmfuse.load('tiny_bottleneck')\n"
            "v = e.embed_modalities([{'text': 'an oak toy'}, {}])\n"
            "heavy = ('webdataset', 'peft', 'matplotlib', 'pyarrow', 'mmfuse.train.trainer', 'mmfuse.finetune', "
            "'mmfuse.data.loader', 'mmfuse.bench')\n"
            "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
            "print(v['fused'].shape)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    loaded, shape = out.stdout.strip().splitlines()
    assert loaded == "[]" and shape == "(2, 16)"


def test_windows_and_length_order():
    assert [(start, len(chunk)) for start, chunk in windows(iter(range(7)), 3)] == [(0, 3), (3, 3), (6, 1)]
    samples = [{"text": t or None} for t in TEXTS]
    order = length_order(samples)
    assert sorted(order) == list(range(len(TEXTS)))
    lengths = [len(TEXTS[i]) for i in order]
    assert lengths == sorted(lengths, reverse=True) and order[-2:] == [0, 3]  # ties keep input order


def test_batched_embedding_keeps_input_order(embedder, media):
    recs = records(media)
    together = embedder.embed(recs)
    alone = np.concatenate([embedder.embed([r]) for r in recs])
    assert together.shape == (len(TEXTS), embedder.dim) and together.dtype == np.float32
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert not np.allclose(together[0], together[1])
    assert embedder.embed(iter(recs)).tolist() == together.tolist()  # any iterable, same batches


def test_threads_give_identical_results(embedder, media):
    recs = records(media) * 3
    expected = embedder.embed(recs, normalize=True)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: embedder.embed(recs, normalize=True), range(8)))
    for result in results:
        np.testing.assert_array_equal(result, expected)


def test_decoding_threads_and_windows_change_nothing(media, monkeypatch, tmp_path):
    """Records decode in a thread pool, the next window while the model runs: same vectors, same order, same
    first error as decoding one record after another in the calling thread."""
    recs = [dict(r, key=f"{r['key']}-{n}") for n in range(5) for r in records(media)]  # 40 records
    threaded = mmfuse.load("tiny_bottleneck", batch_size=3)
    threaded.sort_window_batches = 2  # windows of 6 records: 7 windows, each decoded while the previous one runs
    threaded.decode_threads = 3
    serial = mmfuse.load("tiny_bottleneck", batch_size=3)
    assert serial.decode_threads == 1
    pooled = threaded.embed_modalities(recs)
    plain = serial.embed_modalities(recs)
    for name in plain:
        np.testing.assert_allclose(pooled[name], plain[name], atol=1e-6)
    np.testing.assert_allclose(threaded.encode(recs, "audio"), serial.encode(recs, "audio"), atol=1e-6)
    bad = recs[:9] + [{"key": "first", "image": str(tmp_path / "a.jpg")}] + recs[9:20] + [{"image": b"x"}]
    for predictor in (threaded, serial):
        with pytest.raises(DataError, match="record 'first': image: "):
            predictor.embed(bad)


def test_missing_modalities_give_finite_vectors_and_zero_per_modality_rows(embedder, media):
    recs = [{"text": "oak"}, {"image": str(media["png"])}, {"audio": str(media["wav"])}, {}, {"text": "  "}]
    out = embedder.embed_modalities(recs, normalize=True)
    assert set(out) == {"fused", "text", "image", "audio", "present_text", "present_image", "present_audio"}
    assert np.isfinite(out["fused"]).all()
    assert out["present_text"].tolist() == [True, False, False, False, False]  # blank text counts as absent
    assert out["present_image"].tolist() == [False, True, False, False, False]
    assert out["present_audio"].tolist() == [False, False, True, False, False]
    for m in ("text", "image", "audio"):
        norms = np.linalg.norm(out[m], axis=1)
        np.testing.assert_allclose(norms[out[f"present_{m}"]], 1.0, atol=1e-5)
        assert (norms[~out[f"present_{m}"]] == 0).all()
    np.testing.assert_allclose(np.linalg.norm(out["fused"][:3], axis=1), 1.0, atol=1e-5)


def test_modality_subset_treats_the_others_as_absent(embedder, media):
    recs = records(media)
    text_only = embedder.embed_modalities(recs, modalities="text")
    stripped = embedder.embed([{"text": r["text"]} for r in recs])
    np.testing.assert_allclose(text_only["fused"], stripped, atol=1e-5)
    assert set(text_only) == {"fused", "text", "present_text"}
    with_image = embedder.embed(recs, modalities=["image", "text"])
    assert not np.allclose(with_image[0], text_only["fused"][0])
    with pytest.raises(ConfigError, match="modalities video: this model reads audio, image, text"):
        embedder.embed(recs, modalities="text,video")


def test_a_preset_keeps_the_weights_it_had_with_a_placeholder_head(embedder):
    """A preset is built without head, yet from seed 0 to the weights of its model with a two-class head: the
    vectors a preset gives stay as they were."""
    from dataclasses import replace

    import torch

    from mmfuse.model import ModelConfig
    from mmfuse.presets import load_preset
    from mmfuse.tasks import create_model_and_task

    torch.manual_seed(0)
    with_head, _ = create_model_and_task(replace(ModelConfig(**load_preset("tiny_bottleneck")), labels=["a", "b"]))
    expected = {k: v for k, v in with_head.state_dict().items() if not k.startswith("head.")}
    weights = embedder.model.state_dict()
    assert set(weights) == set(expected)
    for name, tensor in weights.items():
        assert torch.equal(tensor, expected[name]), name


def test_one_return_type_per_method(embedder, media):
    """`embed` is always an (N, D) array -- fused, or one modality's with `modality=` -- and `embed_modalities`
    always a dict, whatever the options and however many records."""
    recs = records(media)
    for kwargs in ({}, {"normalize": True}, {"modalities": "text"}, {"modality": "image"}):
        for batch in (recs, recs[:1], []):
            out = embedder.embed(batch, **kwargs)
            assert isinstance(out, np.ndarray) and out.shape == (len(batch), embedder.dim), kwargs
    per = embedder.embed_modalities(recs, modalities="image")
    assert isinstance(per, dict) and set(per) == {"fused", "image", "present_image"}
    np.testing.assert_array_equal(embedder.embed(recs, modality="image"), embedder.embed_modalities(recs)["image"])
    assert set(embedder.embed_modalities([])) == {"fused", "text", "image", "audio", "present_text",
                                                  "present_image", "present_audio"}
    with pytest.raises(ConfigError, match="the model has no modality 'video'"):
        embedder.embed(recs, modality="video")


def test_batches_are_the_models_collated_inputs_in_input_order(embedder, media):
    recs = records(media)
    batches = list(embedder.batches(recs))
    assert [len(b["key"]) for b in batches] == [3, 3, 2]  # batch_size 3, not length-sorted
    assert [k for b in batches for k in b["key"]] == [r["key"] for r in recs]
    assert {"text_ids", "image", "audio", "present_audio"} <= set(batches[0])
    with pytest.raises(DataError, match="record 'e' has none of the model's modalities"):
        list(embedder.batches([{"key": "e"}]))


def test_every_input_type_of_a_modality_embeds_alike(embedder, media):
    png = media["png"]
    wave, _ = sf.read(media["wav"], dtype="float32")
    forms = [{"image": str(png), "audio": str(media["wav"])},
             {"image": png.read_bytes(), "audio": media["wav"].read_bytes()},
             {"image": Image.open(png), "audio": (wave, 16_000)},
             {"image": media["pixels"], "audio": {"array": wave, "sampling_rate": 16_000}}]
    out = embedder.embed(forms)
    for row in out[1:]:
        np.testing.assert_allclose(row, out[0], atol=1e-5)


def test_bad_record_names_the_record_and_field(embedder, tmp_path):
    with pytest.raises(DataError, match="record 'x': image: "):
        embedder.embed([{"key": "x", "image": str(tmp_path / "missing.jpg")}])
    with pytest.raises(DataError, match="record 1 must be a dict"):
        embedder.embed([{"text": "ok"}, "just a string"])
    assert embedder.embed([]).shape == (0, embedder.dim)


def test_a_preset_is_a_reproducible_untrained_embedder(embedder, media):
    again = mmfuse.load("tiny_bottleneck")
    assert again.fingerprint() == embedder.fingerprint() and len(again.fingerprint()) == 64
    np.testing.assert_allclose(again.embed(records(media)), embedder.embed(records(media)), atol=1e-5)
    assert mmfuse.load("tiny_cross_attention").fingerprint() != embedder.fingerprint()
    assert type(embedder) is mmfuse.Embedder and embedder.model.head is None
    assert not hasattr(embedder, "predict") and not hasattr(embedder, "predict_proba")
    with pytest.raises(ConfigError, match="neither a run directory nor a model preset"):
        mmfuse.load("tiny_botleneck")


@pytest.mark.parametrize("task", ["classification", "multilabel"])
def test_a_predictor_answers_from_its_head_by_the_task_of_its_config(tmp_path, task):
    """A checkpoint whose head is set by hand (zero weights, a chosen bias): the labels and probabilities it must
    give are known without running it. The task comes from the checkpoint's ModelConfig."""
    import torch

    from mmfuse.checkpoint import save_checkpoint
    from mmfuse.model import ModelConfig
    from mmfuse.presets import load_preset
    from mmfuse.tasks import create_model_and_task

    config = ModelConfig(**{**load_preset("tiny_bottleneck"), "labels": ["oak", "steel", "pine"], "task": task})
    model, _ = create_model_and_task(config)
    bias = torch.tensor([0.5, 2.0, -1.0])
    with torch.no_grad():
        model.head.linear.weight.zero_()
        model.head.linear.bias.copy_(bias)
    save_checkpoint(model, config, tmp_path / "ckpt")
    predictor = mmfuse.load(tmp_path / "ckpt", batch_size=2)
    assert type(predictor) is mmfuse.Predictor and predictor.task.name == task
    recs = [{"text": "an oak toy"}, {"image": np.zeros((32, 32, 3), dtype=np.uint8)}, {"text": "steel", "key": "s"}]
    expected = torch.softmax(bias, -1) if task == "classification" else torch.sigmoid(bias)
    np.testing.assert_allclose(predictor.predict_proba(recs), expected.expand(3, 3).numpy(), atol=1e-6)
    answer = "steel" if task == "classification" else ["oak", "steel"]  # sigmoid(0.5), sigmoid(2) >= 0.5
    assert predictor.predict(recs) == [answer] * 3
    assert predictor.embed(recs).shape == (3, predictor.dim)  # and it embeds, like any Embedder


def test_a_trained_run_embeds_with_its_own_weights(demo_shards, tmp_path, tiny_config):
    from dataclasses import replace

    from mmfuse.finetune import finetune

    config = replace(tiny_config, train=replace(tiny_config.train, epochs=1, max_steps=2))
    finetune(config)
    run = mmfuse.load(config.out)
    assert isinstance(run, mmfuse.Predictor) and run.dim == 32 and run.modalities == ["image", "text"]
    img = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(img, format="PNG")
    records = [{"text": "an oak toy", "image": img.getvalue()}, {"text": "steel"}]
    out = run.embed_modalities(records)
    assert out["fused"].shape == (2, 32) and out["present_image"].tolist() == [True, False]
    np.testing.assert_array_equal(run.embed(records), out["fused"])
    assert run.task.name == "classification" and len(run.labels) == 6  # the demo data's labels
    assert run.predict_proba(records).shape == (2, len(run.labels)) and len(run.predict(records)) == 2
