"""train.strategy=fsdp: FSDP2 `fully_shard` through torchrun with 2 gloo processes on the CPU, against DDP."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import psutil
import pytest

import mmfuse
from mmfuse.config import resolve
from mmfuse.data.demo import DemoSpec, build_demo
from mmfuse.errors import ConfigError

FLAGS = ["--epochs", "2", "--batch-size", "32", "--no-progress", "--set", "model.dim=32", "--freeze", "image",
         "--set", "model.encoders.text.kwargs.width=16", "--set", "model.encoders.image.kwargs.width=16",
         "--set", "model.encoders.image.kwargs.image_size=32", "--set", "train.lr=1e-2"]


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m", "mmfuse",
            "finetune", *args]


def torchrun(data, out, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(command("--data", str(data), "--out", str(out), *FLAGS, *extra), capture_output=True,
                          text=True)


@pytest.mark.slow
def test_fsdp_run_matches_ddp_and_saves_loadable_checkpoints(tmp_path):
    data = build_demo(tmp_path / "demo", DemoSpec(train=256, val=64, test=64, image_size=32, shard_size=64))
    ddp, fsdp = torchrun(data, tmp_path / "ddp"), torchrun(data, tmp_path / "fsdp", "--set", "train.strategy=fsdp")
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    # DDP's Join resets the warning filters on exit unless the trainer keeps them: the image decoders' filter holds
    # when the frozen image tower's val and test features are encoded after epoch 1
    assert "capabilities of TorchVision are deprecated" not in ddp.stderr
    assert fsdp.returncode == 0, fsdp.stderr[-2000:]
    a = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    b = json.loads((tmp_path / "fsdp" / "metrics.json").read_text())
    for run in (a, b):  # each rank's feature cache of the frozen image tower holds every key: nothing skipped
        assert [(e["train_samples"], e["train_skipped"]) for e in run["epochs"]] == [(256, 0), (256, 0)]
    assert b["world_size"] == 2
    # the same global batches, gradients averaged over the ranks either way: only reduction order differs
    for x, y in zip(a["epochs"], b["epochs"], strict=True):
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-3)
    assert b["test"]["count"] == 64 and abs(a["test"]["accuracy"] - b["test"]["accuracy"]) <= 2 / 64
    predictor = mmfuse.load(tmp_path / "fsdp")  # full weights were gathered into a plain checkpoint
    assert len(predictor.predict([{"text": "a red wooden circle"}])) == 1


def comparable(metrics: dict) -> dict:
    """metrics.json without wall-clock figures."""
    epochs = [{k: v for k, v in e.items() if k not in ("data_s", "compute_s", "elapsed_s")} for e in metrics["epochs"]]
    return {**{k: metrics[k] for k in ("val", "test", "best_epoch", "steps", "skipped")}, "epochs": epochs}


@pytest.mark.slow
def test_fsdp_run_killed_after_an_epoch_resumes_to_the_same_metrics(tmp_path):
    """kill -9 of the whole torchrun job once epoch 1's resumable checkpoint exists (distributed runs write them at
    epoch ends), then `torchrun ... --resume`: the sharded model and optimizer state, schedule and RNG come back."""
    data = build_demo(tmp_path / "demo", DemoSpec(train=256, val=64, test=64, image_size=32, shard_size=64))
    fsdp = ["--set", "train.strategy=fsdp", "--epochs", "3"]
    ref = torchrun(data, tmp_path / "ref", *fsdp)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "run"
    proc = subprocess.Popen(command("--data", str(data), "--out", str(out), *FLAGS, *fsdp),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = out / "checkpoints" / "resume" / "train_state.pt"
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert state.exists(), f"no resumable checkpoint appeared (exit code {proc.poll()})"
    # the launcher and both ranks (torchrun starts each in a session of its own), mid-way through epoch 2
    for process in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
        process.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not (out / "metrics.json").exists()
    resumed = subprocess.run(command("--resume", str(out), "--no-progress"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout and "epoch 2" in resumed.stdout
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (out, tmp_path / "ref"))
    assert comparable(got) == comparable(want)


def test_strategy_is_validated():
    with pytest.raises(ConfigError, match="train.strategy must be ddp or fsdp"):
        resolve({"train": {"strategy": "zero3"}})
