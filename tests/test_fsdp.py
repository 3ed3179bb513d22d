"""train.strategy=fsdp: FSDP2 `fully_shard` through torchrun with 2 gloo processes on the CPU, against DDP."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import mmfuse
from mmfuse.config import resolve
from mmfuse.data.demo import DemoSpec, build_demo
from mmfuse.errors import ConfigError

FLAGS = ["--epochs", "2", "--batch-size", "32", "--no-progress", "--set", "model.dim=32", "--freeze", "image",
         "--set", "model.encoders.text.kwargs.width=16", "--set", "model.encoders.image.kwargs.width=16",
         "--set", "model.encoders.image.kwargs.image_size=32", "--set", "train.lr=1e-2"]


def torchrun(data, out, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           "-m", "mmfuse", "finetune", "--data", str(data), "--out", str(out), *FLAGS, *extra],
                          capture_output=True, text=True)


@pytest.mark.slow
def test_fsdp_run_matches_ddp_and_saves_loadable_checkpoints(tmp_path):
    data = build_demo(tmp_path / "demo", DemoSpec(train=256, val=64, test=64, image_size=32, shard_size=64))
    ddp, fsdp = torchrun(data, tmp_path / "ddp"), torchrun(data, tmp_path / "fsdp", "--set", "train.strategy=fsdp")
    assert ddp.returncode == 0, ddp.stderr[-2000:]
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


def test_strategy_is_validated():
    with pytest.raises(ConfigError, match="train.strategy must be ddp or fsdp"):
        resolve({"train": {"strategy": "zero3"}})
