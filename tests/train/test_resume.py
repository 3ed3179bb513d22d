"""Exact resume: a run that crashes (or is sent SIGTERM) and is resumed ends with exactly the same metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch

from mmfuse.cli import main
from mmfuse.config import resolve
from mmfuse.finetune import finetune
from mmfuse.train.state import read_state
from mmfuse.train.trainer import Trainer


def comparable(metrics: dict) -> dict:
    """metrics.json without wall-clock figures."""
    epochs = [{k: v for k, v in e.items() if k not in ("data_s", "compute_s", "elapsed_s")} for e in metrics["epochs"]]
    return {"val": metrics["val"], "test": metrics["test"], "best_epoch": metrics["best_epoch"], "epochs": epochs,
            "steps": metrics["steps"], "skipped": metrics["skipped"]}


def layers_for(tiny_layers: dict, out: Path, workers: int = 0, **train) -> dict:
    return {**tiny_layers, "data": {**tiny_layers["data"], "num_workers": workers},
            "train": {**tiny_layers["train"], "epochs": 3, "checkpoint_every": 2, **train}, "out": str(out)}


class Crash(BaseException):
    """Stands in for kill -9: nothing after it runs, no handler saves anything."""


def crash_run(config, crash_at: int, monkeypatch) -> None:
    """Run `config` until its `crash_at`-th micro-step raises (after the checkpoints written before it)."""
    original = Trainer.train_step

    def crashing_step(self, batch):
        if self.micro_step + 1 == crash_at:
            raise Crash
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", crashing_step)
    with pytest.raises(Crash):
        finetune(config, echo=lambda *_: None)
    monkeypatch.setattr(Trainer, "train_step", original)


@pytest.mark.parametrize("crash_at, workers, every", [(5, 0, 2), (9, 0, 2), (5, 2, 3)],
                         ids=["epoch1", "epoch2", "2-workers-odd-batch"])
def test_crash_then_resume_matches_an_uninterrupted_run(tiny_layers, tmp_path, monkeypatch, crash_at, workers,
                                                        every):
    """With 2 loader workers and a checkpoint after an odd number of batches, the resumed DataLoader must start
    with the second worker's shards (the rotation in mmfuse.data.position)."""
    layers = lambda out: layers_for(tiny_layers, out, workers=workers, checkpoint_every=every)  # noqa: E731
    reference = finetune(resolve(layers(tmp_path / "ref")), echo=lambda *_: None)

    config = resolve(layers(tmp_path / "run"))
    crash_run(config, crash_at, monkeypatch)
    assert not (tmp_path / "run" / "metrics.json").exists()
    state = read_state(tmp_path / "run" / "checkpoints" / "resume")
    resumed = finetune(config, echo=lambda *_: None, resume=True)
    assert comparable(resumed) == comparable(reference)
    # times carry across the resume: the run's total and the interrupted epoch's data wait + compute so far
    interrupted = state["epoch"]
    assert state["train_time_s"] > 0 and resumed["train_time_s"] >= round(state["train_time_s"], 1)
    before = state["ranks"][0]["acc"]
    assert before["compute_s"] > 0 and before["data_s"] > 0
    epoch = resumed["epochs"][interrupted - 1]
    assert epoch["compute_s"] >= round(before["compute_s"], 3) and epoch["data_s"] >= round(before["data_s"], 3)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ref_lines = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    timing = ("data_s", "compute_s", "elapsed_s")
    strip = lambda rows: [{k: v for k, v in json.loads(r).items() if k not in timing} for r in rows]  # noqa: E731
    assert strip(lines) == strip(ref_lines)  # the log has no duplicated or missing records either


def test_crash_then_resume_with_the_feature_cache_matches(tiny_layers, tmp_path, monkeypatch):
    """A frozen image tower served from the feature cache (its `CachedEncoder` in the model): a mid-epoch checkpoint
    holds the real encoder's weights under their names, and the resumed run ends as the uninterrupted one."""
    layers = lambda out: layers_for(tiny_layers, out, epochs=2, freeze=["image"], precision="fp32")  # noqa: E731
    reference = finetune(resolve(layers(tmp_path / "ref")), echo=lambda *_: None)
    config = resolve(layers(tmp_path / "run"))
    crash_run(config, 5, monkeypatch)
    weights = safetensors.torch.load_file(tmp_path / "run" / "checkpoints" / "resume" / "model.safetensors")
    assert any(name.startswith("encoders.image.") for name in weights)
    assert comparable(finetune(config, echo=lambda *_: None, resume=True)) == comparable(reference)


@pytest.mark.slow
def test_crash_then_resume_with_augmented_images_matches(tiny_layers, tmp_path, monkeypatch):
    """Augmentation draws from (seed, epoch, sample key), not the global RNG: with 2 loader worker processes doing
    it, a run resumed mid-epoch sees the same images and ends as the uninterrupted one."""
    layers = lambda out: layers_for(tiny_layers, out, workers=2, epochs=2, augment="trivial",  # noqa: E731
                                    precision="fp32")
    reference = finetune(resolve(layers(tmp_path / "ref")), echo=lambda *_: None)
    assert [s["augment"] for s in reference["recipe"]["stages"]] == ["trivial"]
    config = resolve(layers(tmp_path / "run"))
    crash_run(config, 5, monkeypatch)
    assert comparable(finetune(config, echo=lambda *_: None, resume=True)) == comparable(reference)
    plain = finetune(resolve({**layers(tmp_path / "plain"), "train": {**layers(tmp_path)["train"], "augment": "none"}}),
                     echo=lambda *_: None)
    assert plain["epochs"][0]["train_loss"] != reference["epochs"][0]["train_loss"]  # the images did change


def test_resume_without_checkpoint_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["finetune", "--resume", str(tmp_path / "run")]) == 2
    assert "run_config.yaml" in capsys.readouterr().err


def _cli(tiny_layers: dict, out: Path) -> list[str]:
    model = tiny_layers["model"]
    return [sys.executable, "-m", "mmfuse", "finetune", "--data", tiny_layers["data"]["path"], "--out", str(out),
            "--epochs", "3", "--batch-size", "16", "--no-progress", "--set", f"model.dim={model['dim']}",
            "--set", "model.encoders.text.kwargs.width=16", "--set", "model.encoders.image.kwargs.width=16",
            "--set", "model.encoders.image.kwargs.image_size=32", "--set", "train.checkpoint_every=1",
            "--set", "train.lr=3e-3"]


def _wait_for_step(out: Path, proc: subprocess.Popen, minimum: int) -> None:
    state = out / "checkpoints" / "resume" / "train_state.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.exists():
            import torch

            try:
                if torch.load(state, weights_only=True)["step"] >= minimum:
                    return
            except Exception:  # noqa: BLE001 - replaced between exists() and load(); look again
                pass
        time.sleep(0.05)
    pytest.fail(f"no resumable checkpoint at step >= {minimum} appeared (exit code {proc.poll()})")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_real_signal_then_resume_matches(tiny_layers, tmp_path, sig):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(_cli(tiny_layers, tmp_path / "ref"), check=True, capture_output=True, env=env)
    proc = subprocess.Popen(_cli(tiny_layers, tmp_path / "run"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    _wait_for_step(tmp_path / "run", proc, minimum=3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    if sig == signal.SIGTERM:
        assert proc.returncode == 0 and "resume with" in out, err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "run" / "metrics.json").exists()
    subprocess.run([sys.executable, "-m", "mmfuse", "finetune", "--resume", str(tmp_path / "run"), "--no-progress"],
                   check=True, capture_output=True, env=env)
    ref = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    got = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert comparable(got) == comparable(ref)
    leftovers = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]
    assert not leftovers
