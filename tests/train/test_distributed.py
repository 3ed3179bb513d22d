"""DDP through torchrun with 2 gloo processes on the CPU against 1 process with the same global batch."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from mmfuse.data.demo import DemoSpec, build_demo
from mmfuse.data.info import DatasetInfo
from mmfuse.data.loader import make_loader
from mmfuse.encoders import create_encoder

# Text only: it converges within a few epochs to its ceiling (the material, 1/3 of the label), so the two runs can
# be compared without the noise of half-trained models.
FLAGS = ["--modalities", "text", "--epochs", "6", "--batch-size", "32", "--no-progress", "--set", "model.dim=32",
         "--set", "model.encoders.text.kwargs.width=16", "--set", "train.lr=1e-2"]


def test_two_ranks_read_disjoint_shards_covering_the_split(demo_shards, monkeypatch):
    info = DatasetInfo.load(demo_shards)
    pre = {"text": create_encoder("tiny-text").preprocessor}
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append([k for b in make_loader(info, "train", pre, 8, shuffle=True, epoch=1) for k in b["key"]])
    assert seen[0] and seen[1] and not set(seen[0]) & set(seen[1])
    assert len(seen[0]) + len(seen[1]) == info.count("train")


@pytest.mark.slow
def test_two_process_gloo_run_matches_one_process(tmp_path):
    data = build_demo(tmp_path / "demo", DemoSpec(train=480, val=160, test=160, image_size=32, shard_size=80))
    one = tmp_path / "one"
    two = tmp_path / "two"
    subprocess.run([sys.executable, "-m", "mmfuse", "finetune", "--data", str(data), "--out", str(one), *FLAGS],
                   check=True, capture_output=True)
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                               "-m", "mmfuse", "finetune", "--data", str(data), "--out", str(two), *FLAGS],
                              capture_output=True, text=True)
    assert launched.returncode == 0, launched.stderr[-2000:]
    a = json.loads((one / "metrics.json").read_text())
    b = json.loads((two / "metrics.json").read_text())
    assert b["world_size"] == 2 and a["world_size"] == 1
    # every training sample is seen exactly once per epoch, summed over the two ranks
    assert [e["train_samples"] for e in b["epochs"]] == [480] * 6
    assert b["test"]["count"] == a["test"]["count"] == 160
    # Same global batch, different sample order per step. Tolerance: final train loss within 10%, val and test
    # accuracy within 0.08 (160 samples), and both well above chance (1/6): both learned the material.
    loss_a, loss_b = a["epochs"][-1]["train_loss"], b["epochs"][-1]["train_loss"]
    assert abs(loss_a - loss_b) <= 0.1 * loss_a, (loss_a, loss_b)
    for split in ("val", "test"):
        assert abs(a[split]["accuracy"] - b[split]["accuracy"]) <= 0.08, (a[split], b[split])
        assert min(a[split]["accuracy"], b[split]["accuracy"]) >= 0.25, (a[split], b[split])


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m", "mmfuse",
            "finetune", *args]


UNEVEN_FLAGS = [*FLAGS[:2], "--epochs", "2", "--batch-size", "32", "--no-progress", "--set", "model.dim=32",
                "--set", "model.encoders.text.kwargs.width=16", "--set", "train.checkpoint_every=5"]


@pytest.fixture(scope="module")
def uneven_reference(tmp_path_factory):
    """5 train shards of 64 over 2 ranks: one rank has 12 batches of 16 per epoch, the other only 8, then takes
    padding steps; and the uninterrupted 2-epoch run on them."""
    root = tmp_path_factory.mktemp("uneven")
    data = build_demo(root / "demo", DemoSpec(train=320, val=64, test=64, image_size=32, shard_size=64))
    ref = subprocess.run(_torchrun("--data", str(data), "--out", str(root / "ref"), *UNEVEN_FLAGS),
                         capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]
    return data, json.loads((root / "ref" / "metrics.json").read_text())


def _wait_for_checkpoint(out, proc: subprocess.Popen, steps: int | range) -> int:
    """Wait until the resumable checkpoint is at `steps` (a step, or any step of a range); returns that step."""
    steps = range(steps, steps + 1) if isinstance(steps, int) else steps
    state = out / "checkpoints" / "resume" / "train_state.pt"
    deadline, seen = time.time() + 300, None
    while proc.poll() is None and time.time() < deadline:
        try:
            seen = torch.load(state, weights_only=True)["step"] if state.exists() else None
        except Exception:  # noqa: BLE001 - replaced between exists() and load(); look again
            seen = None
        if seen in steps:
            return seen
        time.sleep(0.02)
    pytest.fail(f"no resumable checkpoint at step {steps} appeared (last {seen}, exit code {proc.poll()})")


def _same_run(out, want: dict) -> None:
    got = json.loads((out / "metrics.json").read_text())
    strip = lambda m: [{k: v for k, v in e.items() if k not in ("data_s", "compute_s", "elapsed_s")}  # noqa: E731
                       for e in m["epochs"]]
    assert strip(got) == strip(want)
    assert (got["val"], got["test"], got["skipped"]) == (want["val"], want["test"], want["skipped"])
    assert [e["train_samples"] for e in got["epochs"]] == [320, 320]  # every sample once per epoch


@pytest.mark.slow
def test_torchrun_job_killed_mid_epoch_resumes_to_the_same_metrics(uneven_reference, tmp_path):
    """A mid-epoch checkpoint every step: in steps 9-12 of epoch 1 one rank is padding. The whole job (launcher and
    ranks) is killed with SIGKILL once a checkpoint of step 9-11 exists (a range, so that a loaded machine, which
    notices the file late, still kills before the epoch ends); `torchrun ... --resume` ends with exactly the metrics
    of the uninterrupted job."""
    data, want = uneven_reference
    out = tmp_path / "run"
    proc = subprocess.Popen(_torchrun("--data", str(data), "--out", str(out), *UNEVEN_FLAGS,
                                      "--set", "train.checkpoint_every=1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_checkpoint(out, proc, range(9, 12))
    for process in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
        process.send_signal(signal.SIGKILL)  # torchrun starts each rank in a session of its own
    proc.wait(timeout=60)
    assert not (out / "metrics.json").exists()
    resumed = subprocess.run(_torchrun("--resume", str(out), "--no-progress"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    resumed_at = re.search(r"at epoch (\d+), step (\d+)", resumed.stdout)
    assert resumed_at and int(resumed_at[1]) == 1 and 9 <= int(resumed_at[2]) <= 11, resumed.stdout[:300]
    _same_run(out, want)


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_every_rank_with_a_checkpoint(uneven_reference, tmp_path):
    """SIGTERM to one rank only (as a scheduler pre-empting one node might): every rank sees the stop at the same
    step, a resumable checkpoint is written, the job exits 0, and the resumed job ends as the uninterrupted one."""
    data, want = uneven_reference
    out = tmp_path / "run"
    proc = subprocess.Popen(_torchrun("--data", str(data), "--out", str(out), *UNEVEN_FLAGS),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(out, proc, 5)
    psutil.Process(proc.pid).children()[-1].send_signal(signal.SIGTERM)  # one worker, not the launcher
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    stopped = re.search(r"stopped by SIGTERM at step (\d+)", stdout)
    assert stopped, stdout[-2000:]
    assert 5 < int(stopped.group(1)) < 12  # mid-epoch 1 (12 steps), at the step after the signal
    assert not (out / "metrics.json").exists()
    resumed = subprocess.run(_torchrun("--resume", str(out), "--no-progress"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"step {stopped.group(1)}" in resumed.stdout
    _same_run(out, want)
