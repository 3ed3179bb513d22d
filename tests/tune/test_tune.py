"""`mmfuse tune` end to end: trials, reports, best.yaml, pruning, failed trials and a killed study continued.

The fast tests stand a scripted `finetune` in for the real one (its value follows train.lr, it reports epochs as
the real one does); the slow ones train tiny demo models through the CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import optuna
import pytest
import yaml

import mmfuse.finetune
from mmfuse.cli import main
from mmfuse.errors import ConfigError
from mmfuse.tune import Param, tune

SPACE = [Param("train.lr", "float", 1e-4, 1e-1, log=True), Param("model.dropout", "float", 0.0, 0.4)]
BASE = {"train": {"epochs": 3, "lr": 1e-3}}
TINY_SETS = ["--set", "model.dim=32", "--set", "model.encoders.text.kwargs.width=16",
             "--set", "model.encoders.image.kwargs.width=16", "--set", "model.encoders.image.kwargs.image_size=32",
             "--set", "data.batch_size=16", "--set", "data.eval_batch_size=16", "--set", "train.log_every=2"]


class Scripted:
    """A stand-in for `mmfuse.finetune.finetune`: val accuracy peaks at lr 3e-3; what each call got is kept."""

    def __init__(self, fail: dict[int, BaseException | str] | None = None) -> None:
        self.calls: list[dict] = []
        self.fail = fail or {}

    def __call__(self, config, echo=print, resume=False, overwrite=False, on_epoch=None):
        number = int(Path(config.out).name)
        self.calls.append({"number": number, "lr": config.train.lr, "epochs": [], "config": config})
        if number in self.fail:
            if self.fail[number] == "sigterm":  # finetune's answer to SIGTERM: a resumable checkpoint, no error
                return {"interrupted": True, "step": 1, "out": config.out}
            raise self.fail[number]
        value = 1.0 - abs(math.log10(config.train.lr / 3e-3)) / 4
        for epoch in range(1, config.train.epochs + 1):
            self.calls[-1]["epochs"].append(epoch)
            if on_epoch is not None:
                on_epoch({"epoch": epoch, "step": epoch * 6, "train_loss": 1.0, "val_accuracy": value * epoch / 3})
        return {"val": {"accuracy": value}, "best_epoch": config.train.epochs}


@pytest.fixture
def scripted(monkeypatch):
    def install(**kwargs) -> Scripted:
        fake = Scripted(**kwargs)
        monkeypatch.setattr(mmfuse.finetune, "finetune", fake)
        return fake
    return install


def rows(out: Path) -> list[dict]:
    with (out / "trials.csv").open() as f:
        return list(csv.DictReader(f))


class PruneAll(optuna.pruners.BasePruner):
    """Prune every trial at its first report (`tune` never asks about the base trial)."""

    def prune(self, study, trial) -> bool:
        return True


def test_trial_0_is_the_base_config_and_best_yaml_merges_the_best_values(scripted, tmp_path):
    fake = scripted()
    summary = tune(BASE, tmp_path / "study", 4, space=SPACE, pruner="none", echo=lambda *_: None)
    assert [c["number"] for c in fake.calls] == [0, 1, 2, 3]
    assert fake.calls[0]["lr"] == 1e-3 and fake.calls[0]["config"].model.dropout == 0.1  # the base's values
    for call in fake.calls:  # each trial in its own directory, quietly
        assert call["config"].out == str(tmp_path / "study" / "trials" / f"{call['number']:04d}")
        assert call["config"].train.progress is False
        assert call["config"].train.cache_dir == str(tmp_path / "study" / "features")  # frozen towers: shared
    table = rows(tmp_path / "study")
    assert [r["state"] for r in table] == ["complete"] * 4 and table[0]["base"] == "True"
    assert summary["counts"] == {"complete": 4} and summary["base"]["number"] == 0
    assert summary["importances"] == {}  # too few trials to say
    best = max(table, key=lambda r: float(r["value"]))
    assert summary["best"]["number"] == int(best["number"])
    config = yaml.safe_load((tmp_path / "study" / "best.yaml").read_text())
    assert config["train"]["lr"] == float(best["train.lr"]) and config["train"]["epochs"] == 3
    assert "out" not in config
    assert (tmp_path / "study" / "tune.png").stat().st_size > 0
    assert "| 0 | complete |" in (tmp_path / "study" / "trials.md").read_text()


@pytest.mark.slow  # fANOVA imports scikit-learn
def test_parameter_importances_from_five_complete_trials(scripted, tmp_path):
    scripted()
    summary = tune(BASE, tmp_path / "study", 5, space=SPACE, pruner="none", echo=lambda *_: None)
    importances = summary["importances"]  # drawn beside the trials in tune.png
    assert set(importances) == {"train.lr", "model.dropout"} and abs(sum(importances.values()) - 1) < 1e-6


def test_a_continued_study_runs_only_the_remaining_trials(scripted, tmp_path):
    fake = scripted()
    tune(BASE, tmp_path / "study", 2, space=SPACE, echo=lambda *_: None)
    tune(BASE, tmp_path / "study", 3, space=SPACE, resume=True, echo=lambda *_: None)
    lines = []
    tune(BASE, tmp_path / "study", 3, space=SPACE, echo=lines.append)
    assert [c["number"] for c in fake.calls] == [0, 1, 2]
    assert any("already has 3 finished trials" in line for line in lines)
    assert [r["number"] for r in rows(tmp_path / "study")] == ["0", "1", "2"]


def test_a_killed_trial_is_run_again_when_the_study_continues(scripted, tmp_path):
    fake = scripted(fail={1: KeyboardInterrupt()})
    with pytest.raises(KeyboardInterrupt):
        tune(BASE, tmp_path / "study", 3, space=SPACE, echo=lambda *_: None)
    killed_lr = fake.calls[1]["lr"]
    fake.fail.clear()
    tune(BASE, tmp_path / "study", 3, space=SPACE, echo=lambda *_: None)
    assert [c["number"] for c in fake.calls] == [0, 1, 2, 3]
    assert fake.calls[2]["lr"] == killed_lr  # the killed trial's values, under the next number
    assert [r["state"] for r in rows(tmp_path / "study")] == ["complete", "interrupted", "complete", "complete"]


def test_sigterm_ends_the_study_and_a_rerun_continues_it(scripted, tmp_path, capsys):
    fake = scripted(fail={1: "sigterm"})
    args = ["tune", "--config", str(write(tmp_path / "base.yaml", BASE)), "--space",
            str(write(tmp_path / "space.yaml", {p.key: p.to_dict() for p in SPACE})), "--out", str(tmp_path / "s")]
    assert main([*args, "--trials", "3"]) == 130
    assert "interrupted: re-run the same command to continue" in capsys.readouterr().out
    fake.fail.clear()
    assert main([*args, "--trials", "3"]) == 0
    assert [c["number"] for c in fake.calls] == [0, 1, 2, 3] and fake.calls[2]["lr"] == fake.calls[1]["lr"]
    assert [r["state"] for r in rows(tmp_path / "s")] == ["complete", "interrupted", "complete", "complete"]


def test_timeout_stops_starting_trials(scripted, tmp_path):
    fake = scripted()
    summary = tune(BASE, tmp_path / "study", 50, timeout=1e-3, space=SPACE, echo=lambda *_: None)
    assert len(fake.calls) == summary["total"] < 50


def test_hyperband_counts_the_probe_epochs_of_lp_ft():
    from mmfuse.config import resolve
    from mmfuse.tune.study import make_pruner

    config = resolve({"model": {"encoders": {"text": {"name": "hf-text:bert-base-uncased"}}},
                      "train": {"recipe": "lp-ft", "epochs": 4, "probe_epochs": 6}})
    assert make_pruner("hyperband", SPACE, config)._max_resource == 10


def test_a_study_of_another_base_config_is_refused(scripted, tmp_path):
    scripted()
    tune(BASE, tmp_path / "study", 1, space=SPACE, echo=lambda *_: None)
    with pytest.raises(ConfigError, match="tunes another base config"):
        tune({"train": {"epochs": 2}}, tmp_path / "study", 2, space=SPACE, echo=lambda *_: None)
    with pytest.raises(ConfigError, match="tunes another search space"):
        tune(BASE, tmp_path / "study", 2, space=SPACE[:1], echo=lambda *_: None)
    with pytest.raises(ConfigError, match="holds no study 'other'"):
        tune(BASE, tmp_path / "study", 2, space=SPACE, study_name="other", resume=True, echo=lambda *_: None)
    with pytest.raises(ConfigError, match="--storage nosuchdb://x cannot be opened"):
        tune(BASE, tmp_path / "study", 2, space=SPACE, storage="nosuchdb://x", echo=lambda *_: None)


def test_a_trial_with_an_invalid_config_fails_in_one_line_and_the_study_goes_on(scripted, tmp_path, capsys):
    scripted(fail={1: ConfigError("fusion 'lmf' takes no option 'heads'")})
    code = main(["tune", "--config", str(write(tmp_path / "base.yaml", BASE)), "--space",
                 str(write(tmp_path / "space.yaml", {p.key: p.to_dict() for p in SPACE})),
                 "--trials", "3", "--out", str(tmp_path / "study")])
    printed = capsys.readouterr()
    assert code == 0 and "Traceback" not in printed.out + printed.err
    assert "trial 1 fail: ConfigError: fusion 'lmf' takes no option 'heads'" in printed.out
    assert [r["state"] for r in rows(tmp_path / "study")] == ["complete", "fail", "complete"]
    assert "ConfigError: fusion 'lmf' takes no option 'heads'" in (tmp_path / "study" / "trials.md").read_text()
    assert "3 trials (2 complete, 0 pruned, 1 failed" in printed.out
    assert "best: " in printed.out and "base config (trial 0)" in printed.out


def test_pruning_stops_a_trial_after_the_epoch_it_was_pruned_at(scripted, tmp_path):
    fake, lines = scripted(), []
    summary = tune(BASE, tmp_path / "study", 3, space=SPACE, pruner=PruneAll(), echo=lines.append)
    assert [c["epochs"] for c in fake.calls] == [[1, 2, 3], [1], [1]]
    assert summary["counts"] == {"complete": 1, "pruned": 2} and summary["best"]["number"] == 0
    assert [r["best_epoch"] for r in rows(tmp_path / "study")] == ["3", "1", "1"]
    assert "3 trials (1 complete, 2 pruned, 0 failed, 0 interrupted)" in lines[-1]
    assert "best: the base config (trial 0) val accuracy" in lines[-1] and "no trial beat it" in lines[-1]


def test_the_medians_pruner_and_hyperband_are_built_by_name(scripted, tmp_path):
    scripted()
    for name in ("median", "hyperband"):
        summary = tune(BASE, tmp_path / name, 2, space=SPACE, pruner=name, echo=lambda *_: None)
        assert summary["total"] == 2
    with pytest.raises(ConfigError, match="--pruner must be one of"):
        tune(BASE, tmp_path / "x", 2, space=SPACE, pruner="percentile", echo=lambda *_: None)


def test_tune_refuses_torchrun(scripted, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="without torchrun"):
        tune(BASE, tmp_path / "study", 2, space=SPACE, echo=lambda *_: None)


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_cli_on_demo_shards_then_best_yaml_fine_tunes_and_a_rerun_continues(demo_shards, tmp_path, capsys):
    out = tmp_path / "study"
    space = write(tmp_path / "space.yaml", {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                                            "model.fusion": {"type": "categorical", "choices": ["concat-mlp",
                                                                                                "gated"]}})
    args = ["tune", "--data", str(demo_shards), *TINY_SETS, "--set", "train.epochs=1", "--space", str(space),
            "--out", str(out)]
    assert main([*args, "--trials", "2"]) == 0
    printed = capsys.readouterr().out
    assert "trial 0 (base config) complete" in printed and "trial 1 complete" in printed
    table = rows(out)
    assert [r["state"] for r in table] == ["complete", "complete"]
    for r in table:
        metrics = json.loads((out / "trials" / f"{int(r['number']):04d}" / "metrics.json").read_text())
        assert metrics["val"]["accuracy"] == pytest.approx(float(r["value"])) and metrics["fusion"] == r["model.fusion"]
    assert (out / "tune.png").exists() and (out / "logs" / "0001.log").read_text()
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["data"]["path"] == str(demo_shards) and best["model"]["dim"] == 32
    assert main(["finetune", "--config", str(out / "best.yaml"), "--out", str(tmp_path / "best"), "--max-steps", "2",
                 "--no-progress"]) == 0
    assert json.loads((tmp_path / "best" / "metrics.json").read_text())["fusion"] == best["model"]["fusion"]
    capsys.readouterr()
    assert main([*args, "--trials", "3", "--resume"]) == 0
    printed = capsys.readouterr().out
    assert [line.split()[1] for line in printed.splitlines() if line.startswith("trial ")] == ["2"]
    assert len(rows(out)) == 3


@pytest.mark.slow
def test_frozen_towers_are_encoded_once_per_study_and_pruned_runs_stop(demo_shards, tmp_path):
    base = {"model": {"dim": 32, "encoders": {
                "text": {"name": "tiny-text", "kwargs": {"width": 16, "layers": 1, "heads": 2}},
                "image": {"name": "tiny-image", "kwargs": {"width": 16, "layers": 1, "heads": 2, "image_size": 32}}}},
            "data": {"path": str(demo_shards), "batch_size": 16, "eval_batch_size": 16},
            "train": {"epochs": 2, "freeze": ["text", "image"], "log_every": 2}}
    out = tmp_path / "study"
    summary = tune(base, out, 2, space=SPACE[:1], pruner=PruneAll(), echo=lambda *_: None)
    assert summary["counts"] == {"complete": 1, "pruned": 1}
    assert sorted(p.name.split("-")[0] for p in (out / "features").iterdir()) == ["image"] * 3 + ["text"] * 3
    assert "read from" in (out / "logs" / "0001.log").read_text()  # trial 1 reused trial 0's features
    records = [json.loads(line) for line in (out / "trials" / "0001" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "val_accuracy" in r] == [1]  # pruned after its first epoch
    assert not (out / "trials" / "0001" / "metrics.json").exists()
