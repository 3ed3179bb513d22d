"""Runs whose every tower is cached: epochs served from memory give the replay's metrics, resume exactly mid-epoch,
split over DDP ranks, and write `last` once, loadable on its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_resume import comparable, crash_run

import mmfuse
from mmfuse.checkpoint import read_checkpoint_config, read_weights
from mmfuse.config import resolve
from mmfuse.data.demo import DemoSpec, build_demo
from mmfuse.data.info import DatasetInfo
from mmfuse.data.loader import read_records
from mmfuse.data.memory import MemorySplit
from mmfuse.finetune import finetune
from mmfuse.train.feature_cache import FeatureCache
from mmfuse.train.state import read_state


def layers(tiny_layers: dict, out, **train) -> dict:
    """Both towers frozen (every modality cached), fp32 (the two paths are compared bit for bit)."""
    return {**tiny_layers, "train": {**tiny_layers["train"], "freeze": ["text", "image"], "precision": "fp32",
                                     "epochs": 3, "checkpoint_every": 2, **train}, "out": str(out)}


def count_memory_passes(monkeypatch) -> list[int]:
    calls = [0]
    original = MemorySplit.batches

    def counting(self, *args, **kwargs):
        calls[0] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MemorySplit, "batches", counting)
    return calls


def test_in_memory_epochs_give_the_replayed_runs_metrics_and_checkpoints_load_alone(tiny_layers, tmp_path,
                                                                                   monkeypatch, demo_shards):
    passes = count_memory_passes(monkeypatch)
    memory = finetune(resolve(layers(tiny_layers, tmp_path / "memory")), echo=lambda *_: None)
    assert passes[0] == 3 + 3 + 1  # train and val of each epoch, then test: every loader served from memory
    monkeypatch.setattr(FeatureCache, "in_memory", False)
    replayed = finetune(resolve(layers(tiny_layers, tmp_path / "replayed")), echo=lambda *_: None)
    assert passes[0] == 7
    assert comparable(memory) == comparable(replayed)
    assert [e["train_samples"] for e in memory["epochs"]] == [DatasetInfo.load(demo_shards).count("train")] * 3

    run = tmp_path / "memory"
    _, meta = read_checkpoint_config(run / "checkpoints" / "last")
    assert meta["epoch"] == 3  # `last` is written once, after the last epoch, with its number
    assert read_weights(run / "checkpoints" / "last").keys() == read_weights(run / "checkpoints" / "best").keys()
    records = list(read_records(DatasetInfo.load(demo_shards), "test"))[:5]
    for checkpoint in ("best", "last"):
        predictor = mmfuse.load(run, checkpoint=checkpoint)
        assert len(predictor.predict(records)) == 5


@pytest.mark.parametrize("crash_at", [5, 9], ids=["epoch1", "epoch2"])
def test_crash_mid_epoch_then_resume_on_the_in_memory_path_matches_an_uninterrupted_run(tiny_layers, tmp_path,
                                                                                        monkeypatch, crash_at):
    reference = finetune(resolve(layers(tiny_layers, tmp_path / "ref")), echo=lambda *_: None)
    config = resolve(layers(tiny_layers, tmp_path / "run"))
    crash_run(config, crash_at, monkeypatch)
    state = read_state(tmp_path / "run" / "checkpoints" / "resume")
    assert state["ranks"][0]["position"]["consumed"]  # a mid-epoch position
    assert not (tmp_path / "run" / "checkpoints" / "last").exists()  # only once the epochs are over
    passes = count_memory_passes(monkeypatch)
    resumed = finetune(config, echo=lambda *_: None, resume=True)
    assert passes[0] > 0
    assert comparable(resumed) == comparable(reference)


@pytest.mark.slow
def test_two_process_run_of_cached_towers_splits_the_samples_and_matches_the_recomputed_run(tmp_path):
    """torchrun, 2 gloo processes, image only (fixed-size inputs: cached features equal recomputed ones bit for
    bit): served from memory, each rank its own samples, the same metrics as recomputing the tower every epoch
    through the tar files."""
    data = build_demo(tmp_path / "demo", DemoSpec(train=320, val=64, test=64, image_size=32, shard_size=64))
    flags = ["--modalities", "image", "--freeze", "image", "--epochs", "2", "--batch-size", "32", "--no-progress",
             "--precision", "fp32", "--set", "model.dim=32", "--set", "model.encoders.image.kwargs.width=16",
             "--set", "train.checkpoint_every=3", "--data", str(data)]
    runs = {}
    for name, extra in (("cached", []), ("recomputed", ["--set", "train.cache_frozen=false"])):
        launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                   "--standalone", "-m", "mmfuse", "finetune", "--out", str(tmp_path / name),
                                   *flags, *extra], capture_output=True, text=True)
        assert launched.returncode == 0, launched.stderr[-2000:]
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert runs["cached"]["world_size"] == 2
    assert [e["train_samples"] for e in runs["cached"]["epochs"]] == [320, 320]  # each sample once, over 2 ranks
    assert comparable(runs["cached"]) == comparable(runs["recomputed"])


def test_a_checkpoint_of_unchanged_weights_links_the_previous_ones_file(tiny_layers, tmp_path):
    """best, then resume (or last) at the same step hold the same weights: the second is a hard link, not a second
    serialisation, and each directory still loads on its own."""
    summary = finetune(resolve(layers(tiny_layers, tmp_path / "run", epochs=2, checkpoint_every=0)),
                       echo=lambda *_: None)
    ckpt = tmp_path / "run" / "checkpoints"
    inode = {k: os.stat(ckpt / k / "model.safetensors").st_ino for k in ("best", "last", "resume")}
    if summary["best_epoch"] == 1:  # best and resume after epoch 1; last after epoch 2
        assert inode["best"] == inode["resume"] != inode["last"]
    else:  # resume after epoch 1; best and last after epoch 2
        assert inode["best"] == inode["last"] != inode["resume"]
    for k in ("best", "last", "resume"):
        assert read_weights(ckpt / k).keys() == read_weights(ckpt / "best").keys()
    assert read_state(ckpt / "resume")["epoch"] == 2
