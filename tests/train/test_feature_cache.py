"""Frozen-encoder feature cache: same metrics as recomputing, no decoding of cached media, fingerprinted disk files."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import torch

from mmfuse.config import resolve
from mmfuse.data.cached import KeyLookup
from mmfuse.data.info import DatasetInfo
from mmfuse.data.loader import make_loader
from mmfuse.encoders.timm_image import ImagePreprocessor
from mmfuse.finetune import finetune
from mmfuse.fingerprint import weights_fingerprint
from mmfuse.tasks import create_model_and_task
from mmfuse.train.feature_cache import FeatureCache, SplitFeatures, fingerprint
from mmfuse.train.freeze import apply_freeze


def metrics_without_time(summary: dict) -> dict:
    epochs = [{k: v for k, v in e.items() if k not in ("data_s", "compute_s", "elapsed_s")} for e in summary["epochs"]]
    return {"epochs": epochs, "val": summary["val"], "test": summary["test"], "skipped": summary["skipped"]}


def run(tiny_layers: dict, tmp_path, name: str, **train) -> tuple[dict, list[str]]:
    lines: list[str] = []
    layers = {**tiny_layers, "train": {**tiny_layers["train"], "freeze": ["image"], **train},
              "out": str(tmp_path / name)}
    return finetune(resolve(layers), echo=lines.append), lines


def count_image_decodes(monkeypatch) -> list[int]:
    calls = [0]
    original = ImagePreprocessor.transform

    def counting(self, value):
        calls[0] += 1
        return original(self, value)

    monkeypatch.setattr(ImagePreprocessor, "transform", counting)
    return calls


@pytest.mark.parametrize("fusion, freeze", [("concat-mlp", ["image"]), ("cross-attention", ["image"]),
                                            ("gated", ["image", "text"])])
def test_cached_run_has_the_same_metrics_and_decodes_images_once(tiny_layers, tmp_path, monkeypatch, demo_shards,
                                                                 fusion, freeze):
    """fp32: the cached path must give the recomputed path's numbers exactly (bf16 has its own test below)."""
    tiny_layers = {**tiny_layers, "model": {**tiny_layers["model"], "fusion": fusion},
                   "train": {**tiny_layers["train"], "precision": "fp32"}}
    calls = count_image_decodes(monkeypatch)
    recomputed, _ = run(tiny_layers, tmp_path, "recompute", cache_frozen=False, freeze=freeze)
    recompute_calls, calls[0] = calls[0], 0
    cached, lines = run(tiny_layers, tmp_path, "cached", freeze=freeze)
    if "text" not in freeze:  # fixed-size images: a sample's encoding does not depend on its batch, bit for bit
        assert metrics_without_time(cached) == metrics_without_time(recomputed)
    else:  # a text's pooled mean varies in the last float bit with its batch's padding length, recomputed or not
        a, b = metrics_without_time(cached), metrics_without_time(recomputed)
        assert (a["val"], a["test"], a["skipped"]) == (b["val"], b["test"], b["skipped"])
        for x, y in zip(a["epochs"], b["epochs"], strict=True):
            assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5)
            x.pop("train_loss"), y.pop("train_loss")
            assert x == y
    info = DatasetInfo.load(demo_shards)
    once = info.count("train") + info.count("val") + info.count("test")
    assert recompute_calls == 2 * info.count("train") + 2 * info.count("val") + info.count("test")
    assert calls[0] == once  # each split encoded once; later epochs never decode an image
    assert sum("cached frozen image features" in line for line in lines) == 3


@pytest.mark.parametrize("fusion", ["concat-mlp", "cross-attention"])
def test_cached_run_under_bf16_autocast_matches_the_recomputed_run_within_bf16_rounding(tiny_layers, tmp_path,
                                                                                        fusion):
    """Under bf16 autocast a frozen tower's features depend on the batch they were computed in (oneDNN blocks a
    bf16 matmul by its shape), so cached and recomputed runs agree to bf16 rounding, not bit for bit."""
    tiny_layers = {**tiny_layers, "model": {**tiny_layers["model"], "fusion": fusion},
                   "train": {**tiny_layers["train"], "precision": "bf16"}}
    recomputed, _ = run(tiny_layers, tmp_path, "recompute", cache_frozen=False)
    cached, lines = run(tiny_layers, tmp_path, "cached")
    assert sum("cached frozen image features" in line for line in lines) == 3
    a, b = metrics_without_time(cached), metrics_without_time(recomputed)
    assert a["skipped"] == b["skipped"] and len(a["epochs"]) == len(b["epochs"]) == 2
    for x, y in zip(a["epochs"], b["epochs"], strict=True):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=0.02)
    for split in ("val", "test"):
        assert a[split]["accuracy"] == pytest.approx(b[split]["accuracy"], abs=3 / 32)  # a few of 32-40 samples


def test_disk_cache_is_reused_and_a_changed_encoder_misses(tiny_layers, tmp_path):
    cache_dir = tmp_path / "features"
    first, lines = run(tiny_layers, tmp_path, "a", epochs=1, cache_dir=str(cache_dir))
    assert len(list(cache_dir.glob("image-*.safetensors"))) == 3
    second, lines = run(tiny_layers, tmp_path, "b", epochs=1, cache_dir=str(cache_dir))
    assert sum("read from" in line for line in lines) == 3 and not any("cached frozen" in ln for ln in lines)
    assert metrics_without_time(second) == metrics_without_time(first)
    _, lines = run(tiny_layers, tmp_path, "c", epochs=1, seed=1, cache_dir=str(cache_dir))  # other init weights
    assert not any("read from" in line for line in lines)
    assert len(list(cache_dir.glob("image-*.safetensors"))) == 6


def test_fingerprint_follows_weights_spec_and_shards(tiny_config, demo_shards):
    info = DatasetInfo.load(demo_shards)
    model = create_model_and_task(replace(tiny_config.model, labels=info.labels))[0]
    spec = tiny_config.model.encoders["image"]
    weights = weights_fingerprint(model.encoders["image"])
    base = fingerprint(weights, spec, info, "train", "image", "fp32", False)
    assert base == fingerprint(weights, spec, info, "train", "image", "fp32", False)
    with torch.no_grad():
        next(model.encoders["image"].parameters()).add_(1e-3)
    changed_weights = weights_fingerprint(model.encoders["image"])
    assert fingerprint(changed_weights, spec, info, "train", "image", "fp32", False) != base
    assert fingerprint(weights, replace(spec, kwargs={**spec.kwargs, "image_size": 48}), info, "train", "image",
                       "fp32", False) != base
    changed = replace(info, splits={**info.splits, "train": {**info.splits["train"], "shards": [
        {**s, "sha256": "0" * 64} for s in info.splits["train"]["shards"]]}})
    assert fingerprint(weights, spec, changed, "train", "image", "fp32", False) != base
    assert fingerprint(weights, spec, info, "val", "image", "fp32", False) != base


def test_only_fully_frozen_towers_are_cached_and_they_stay_in_eval_mode(tiny_config, demo_shards):
    info = DatasetInfo.load(demo_shards)
    model = create_model_and_task(replace(tiny_config.model, labels=info.labels))[0]
    apply_freeze(model, ["image"])
    apply_freeze(model, ["text"], unfreeze_top=1)
    model.train()
    assert model.frozen_towers() == ["image"]
    assert not model.encoders["image"].training and model.encoders["text"].training
    cache = FeatureCache(model, tiny_config.model.encoders, info, torch.device("cpu"), "fp32", 16,
                         echo=lambda *_: None)
    assert cache.towers == ["image"]
    cache.prepare("val")
    features = cache.splits[("image", "val")]
    assert features.pooled.shape == (info.count("val"), model.encoders["image"].width)
    assert features.tokens is None  # concat-mlp reads pooled vectors only


def test_with_every_tower_cached_the_tar_files_are_not_read_again(tiny_config, demo_shards, tmp_path):
    shards = shutil.copytree(demo_shards, tmp_path / "shards")
    info = DatasetInfo.load(shards)
    model = create_model_and_task(replace(tiny_config.model, labels=info.labels, fusion="cross-attention"))[0]
    apply_freeze(model, ["image", "text"])
    cache = FeatureCache(model, tiny_config.model.encoders, info, torch.device("cpu"), "fp32", 16,
                         echo=lambda *_: None)
    preprocessors, source = model.preprocessors(), cache.source("train")
    cache.install(model)
    kwargs = {"shuffle": True, "seed": 3, "epoch": 2, "shuffle_buffer": 20}

    def with_features(batches: list[dict]) -> list[dict]:  # each batch with its towers' cached outputs
        return [{**b, **{f"{m}_{k}": getattr(model.encoders[m](b), k) for m in model.modalities
                         for k in ("pooled", "tokens", "mask")}} for b in batches]

    from_tars = with_features(list(make_loader(info, "train", preprocessors, 16, lookups=source["lookups"],
                                               **kwargs)))
    for url in info.shard_urls("train"):
        (tmp_path / "shards" / url.rsplit("/", 1)[1]).unlink()
    replayed = with_features(list(make_loader(info, "train", preprocessors, 16, **kwargs, **source)))
    assert [b["key"] for b in replayed] == [b["key"] for b in from_tars]
    assert sum(len(b["key"]) for b in replayed) == info.count("train")
    for a, b in zip(replayed, from_tars, strict=True):
        assert a.keys() == b.keys()
        for name, value in a.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b[name]), name
            else:
                assert value == b[name], name


def test_each_rank_caches_the_whole_split(tiny_config, demo_shards, monkeypatch):
    """A rank's shards change from epoch to epoch, so its cache must hold every key, not only its first shards."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    info = DatasetInfo.load(demo_shards)
    model = create_model_and_task(replace(tiny_config.model, labels=info.labels))[0]
    apply_freeze(model, ["image"])
    cache = FeatureCache(model, tiny_config.model.encoders, info, torch.device("cpu"), "fp32", 16,
                         echo=lambda *_: None)
    cache.prepare("train")
    assert len(set(cache.splits[("image", "train")].keys)) == info.count("train")


def features(rows: dict[str, tuple[list[list[float]], bool]], width: int = 2) -> SplitFeatures:
    """Packed features from {key: (tokens, present)}; each token a `width`-vector, pooled = the tokens' mean."""
    keys = list(rows)
    tokens = [torch.tensor(t, dtype=torch.float32).reshape(-1, width) for t, _ in rows.values()]
    lengths = torch.tensor([0] + [len(t) for t in tokens]).cumsum(0)
    return SplitFeatures(keys, torch.stack([t.mean(0) if len(t) else torch.zeros(width) for t in tokens]),
                         torch.tensor([p for _, p in rows.values()]), torch.cat(tokens),
                         torch.ones(int(lengths[-1]), dtype=torch.bool), lengths)


def test_cached_encoder_looks_rows_up_by_split_and_key_with_the_real_encoders_weights(tiny_config, demo_shards):
    info = DatasetInfo.load(demo_shards)
    model = create_model_and_task(replace(tiny_config.model, labels=info.labels, fusion="cross-attention"))[0]
    apply_freeze(model, ["image"])
    names = sorted(model.state_dict())
    real = model.encoders["image"]
    cache = FeatureCache(model, tiny_config.model.encoders, info, torch.device("cpu"), "fp32", 16,
                         echo=lambda *_: None)
    cached = cache.encoders["image"]
    cached.splits["val"] = features({"a": ([[1, 1]], True), "b": ([[2, 2], [4, 4], [6, 6]], True),
                                     "c": ([], False)})
    cached.splits["test"] = features({"a": ([[7, 7], [9, 9]], True)})  # the same key in another split
    cache.install(model)
    assert model.encoders["image"] is cached and cached.encoder is real
    assert sorted(model.state_dict()) == names  # encoders.image.* as before: checkpoints save the real weights
    assert cached.state_dict().keys() == real.state_dict().keys() and cached.preprocessor is real.preprocessor
    assert all(p is q for p, q in zip(cached.parameters(), real.parameters(), strict=True))

    present = torch.ones(3, dtype=torch.bool)
    out = model.encoders["image"]({"split": "val", "key": ["c", "b", "a"], "present_image": present})
    assert out.tokens.shape == (3, 3, 2) and out.mask.tolist() == [[False] * 3, [True] * 3, [True, False, False]]
    assert out.tokens[1].tolist() == [[2, 2], [4, 4], [6, 6]] and out.tokens[2].tolist() == [[1, 1], [0, 0], [0, 0]]
    assert out.pooled.tolist() == [[0, 0], [4, 4], [1, 1]]  # the absent 'c': its stored (placeholder) row
    out = cached({"split": "test", "key": ["a"], "present_image": present[:1]})
    assert out.tokens.tolist() == [[[7, 7], [9, 9]]] and out.pooled.tolist() == [[8, 8]]
    out = cached({"split": "val", "key": ["c"], "present_image": present[:1]})
    assert out.tokens.shape == (1, 1, 2) and not out.mask.any()  # no real token: one masked one, as before
    with pytest.raises(KeyError, match="split 'train' are not cached"):
        cached({"split": "train", "key": ["a"], "present_image": present[:1]})
    cache.uninstall(model)
    assert model.encoders["image"] is real


def test_a_looked_up_modality_is_never_decoded_and_an_unknown_key_is_skipped_like_a_decode_failure(
        tiny_config, demo_shards, monkeypatch):
    info = DatasetInfo.load(demo_shards)
    model = create_model_and_task(replace(tiny_config.model, labels=info.labels))[0]
    keys = [b["key"] for b in make_loader(info, "val", model.preprocessors(), 64)][0]
    present = {k: i % 3 != 0 for i, k in enumerate(keys[1:])}  # keys[0] is not in the cache
    calls = count_image_decodes(monkeypatch)
    batches = list(make_loader(info, "val", model.preprocessors(), 64,
                               lookups={"image": KeyLookup("image", present)}))
    assert calls[0] == 0 and len(batches) == 1
    b = batches[0]
    assert b["key"] == keys[1:] and b["split"] == "val" and "image" not in b and "text_ids" in b
    assert b["present_image"].tolist() == list(present.values())
    assert b["skipped"] == {"image: cannot decode": 1}
