"""Training diagnostics: a run whose validation sits at chance while its train loss falls says so, with what to
try; validation above chance stays quiet."""

from __future__ import annotations

import csv
import random

import pytest

from mmfuse.cli import main
from mmfuse.config import resolve
from mmfuse.finetune import finetune
from mmfuse.train.diagnostics import ChanceWatch, at_chance

WORDS = "amber birch cedar delta ember fjord grove heron iris juniper kelp lumen moss nectar onyx pine".split()


def test_at_chance_reads_the_majority_rate_and_one_class_predictions():
    assert at_chance({"accuracy": 0.51, "count": 400, "chance": {"majority": 0.5, "top_prediction": 0.6}})
    assert at_chance({"accuracy": 0.90, "count": 400, "chance": {"majority": 0.5, "top_prediction": 0.55}}) is None
    one = at_chance({"accuracy": 0.62, "count": 400, "chance": {"majority": 0.6, "top_prediction": 0.99}})
    assert one and "99% of val predictions are one class" in one
    assert at_chance({"rmse": 1.0, "count": 10}) is None  # not a classifier: nothing to say


def test_warns_once_per_stage_only_when_the_train_loss_falls():
    lines: list[str] = []
    watch = ChanceWatch(lines.append, ["a lower --lr"])
    chance = {"accuracy": 0.5, "count": 100, "chance": {"majority": 0.5, "top_prediction": 0.5}}
    assert watch.after_epoch("train", [{"train_loss": 0.7}], chance) is None  # one epoch: no trend yet
    assert watch.after_epoch("train", [{"train_loss": 0.7}, {"train_loss": 0.69}], chance) is None  # flat loss
    falling = [{"train_loss": 0.7}, {"train_loss": 0.69}, {"train_loss": 0.3}]
    message = watch.after_epoch("train", falling, chance)
    assert message and "fell 0.700 -> 0.300" in message and "Try: a lower --lr" in message
    assert watch.after_epoch("train", [*falling, {"train_loss": 0.1}], chance) is None  # once per stage
    assert watch.after_epoch("finetune", falling, chance)  # a new stage may warn again
    assert lines == [message, lines[1]]


@pytest.fixture
def random_labels(tmp_path):
    """Text rows whose labels are coin flips: the train split can be memorised, nothing generalises."""
    rng = random.Random(0)
    manifest = tmp_path / "items.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "title", "label"])
        for i in range(160):
            writer.writerow([f"item{i}", " ".join(rng.choices(WORDS, k=6)), rng.choice(["yes", "no"])])
    assert main(["shard", "--manifest", str(manifest), "--text", "title", "--label", "label", "--no-progress",
                 "--fractions", "train=0.5,val=0.5", "--out", str(tmp_path / "shards")]) == 0
    return tmp_path / "shards"


def test_a_run_memorising_at_chance_is_told_what_to_try(random_labels, tmp_path):
    config = resolve({"model": {"modalities": ["text"], "dim": 32,
                                "encoders": {"text": {"name": "tiny-text", "kwargs": {"width": 32, "layers": 1,
                                                                                      "heads": 2}}}},
                      "data": {"path": str(random_labels), "batch_size": 16, "test_split": "val"},
                      "train": {"epochs": 8, "lr": 1e-2, "progress": False, "checkpoint_every": 0},
                      "out": str(tmp_path / "run")})
    lines: list[str] = []
    summary = finetune(config, echo=lines.append)
    warnings = [line for line in lines if line.startswith("mmfuse: warning:")]
    assert len(warnings) == 1, lines
    assert "memorising the training split" in warnings[0]
    assert "the text tower starts from random weights" in warnings[0]
    losses = [r["train_loss"] for r in summary["epochs"]]
    assert losses[-1] < 0.85 * losses[0]
