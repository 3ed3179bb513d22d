"""Model selection: best / top-k epochs in either direction, early stopping, and both in a fine-tuning run."""

from __future__ import annotations

import json

from mmfuse.config import resolve
from mmfuse.finetune import finetune
from mmfuse.inference import load
from mmfuse.train.selection import Selection


def test_top_k_and_patience_when_higher_is_better():
    s = Selection("accuracy", keep=2, patience=2)
    assert s.update(1, 0.5) == (True, [])
    assert s.update(2, 0.7) == (True, [])
    assert s.update(3, 0.6) == (False, [1])  # epoch 1 drops out of the top 2
    assert s.update(4, 0.7) == (False, [3])  # a tie with the best is no improvement, but beats epoch 3
    assert [e for _, e in s.top] == [2, 4] and s.best_epoch == 2 and s.should_stop  # 2 epochs without a better one
    assert Selection.from_dict(s.to_dict()) == s


def test_lower_is_better_and_nan_never_wins():
    s = Selection("rmse", higher_is_better=False, keep=1)
    s.update(1, 3.0)
    assert s.update(2, float("nan")) == (False, [2])
    assert s.update(3, 2.5) == (True, [1]) and s.best_epoch == 3 and not s.should_stop  # patience 0: never stops


def test_early_stopping_and_the_best_k_checkpoints_in_a_run(tiny_layers, tmp_path):
    config = resolve(tiny_layers, {"train": {"epochs": 4, "lr": 1e-12, "warmup": 0.0, "early_stopping_patience": 1,
                                             "keep_best": 2}})
    lines = []
    summary = finetune(config, echo=lines.append)
    out = tmp_path / "run"
    # the weights hardly move: epoch 1 stays the best, epoch 2 brings no improvement, the run stops there
    assert len(summary["epochs"]) == 2 and summary["stopped_early"] and summary["best_epoch"] == 1
    assert any("early stopping after epoch 2" in line for line in lines)
    index = json.loads((out / "checkpoints" / "top" / "index.json").read_text())
    assert [row["epoch"] for row in index] == [1, 2] and index[0]["accuracy"] == summary["val"]["accuracy"]
    assert sorted(p.name for p in (out / "checkpoints" / "top").iterdir()) == ["epoch-0001", "epoch-0002",
                                                                               "index.json"]
    assert load(out / "checkpoints" / "top" / "epoch-0002").predict([{"text": "an oak toy"}])
