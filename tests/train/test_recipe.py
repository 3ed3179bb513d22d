"""Training recipes (`train.recipe`): which stages a run takes, LP-FT end to end (probe on cached frozen towers,
then fine-tuning from the probe's best weights), resume across the stage boundary, and the CLI's report."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import safetensors.torch
import torch
import yaml
from test_resume import comparable, crash_run

from mmfuse.cli import main
from mmfuse.config import resolve
from mmfuse.errors import ConfigError
from mmfuse.finetune import finetune
from mmfuse.tasks import create_model_and_task
from mmfuse.train.recipe import plan_recipe
from mmfuse.train.state import read_state
from mmfuse.train.trainer import Trainer


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> str:
    """A tiny BERT saved as a user's local pretrained model directory (`hf-text` loads it as pretrained)."""
    from mmfuse.encoders import create_encoder

    folder = tmp_path_factory.mktemp("tiny-bert")
    encoder = create_encoder("tiny-text", width=16, layers=2, heads=2)
    encoder.backbone.save_pretrained(folder)
    encoder.preprocessor.tokenizer.save_pretrained(folder)
    return str(folder)


def pretrained_layers(tiny_layers: dict, text_dir: str, out: Path, **train) -> dict:
    """The tiny run with a 'pretrained' text tower (a local model directory) beside the random-init image tower."""
    encoders = {**tiny_layers["model"]["encoders"],
                "text": {"name": "hf-text", "kwargs": {"model": text_dir, "pooling": "mean", "max_length": 32}}}
    return {**tiny_layers, "model": {**tiny_layers["model"], "encoders": encoders},
            "train": {**tiny_layers["train"], "probe_epochs": 2, "probe_patience": 0, "epochs": 2,
                      "checkpoint_every": 0, **train}, "out": str(out)}


def test_auto_picks_lp_ft_only_for_pretrained_towers_the_user_left_unfrozen(tiny_layers, text_dir, tmp_path):
    config = resolve(pretrained_layers(tiny_layers, text_dir, tmp_path))
    model = create_model_and_task(replace(config.model, labels=["a", "b"]))[0]
    plan = plan_recipe(config.train, model)
    assert plan.recipe == "lp-ft" and "pretrained text tower" in plan.reason
    probe, tune = plan.stages
    assert (probe.name, probe.frozen, probe.epochs) == ("probe", ("text",), 2)
    assert (tune.name, tune.frozen, tune.epochs) == ("finetune", (), 2)
    assert tune.train.tower_lr["head"] == pytest.approx(config.train.lr * config.train.finetune_head_lr_scale)
    assert plan_recipe(replace(config.train, freeze=["text"]), model).recipe == "full"
    assert plan_recipe(replace(config.train, init_from="runs/x"), model).recipe == "full"
    frozen = plan_recipe(replace(config.train, recipe="frozen"), model)
    assert [(s.name, s.frozen) for s in frozen.stages] == [("probe", ("text",))]
    assert plan_recipe(replace(config.train, recipe="lp-ft", unfreeze_top=1), model).stages[1].top_only == ("text",)
    tiny = create_model_and_task(replace(resolve(tiny_layers).model, labels=["a", "b"]))[0]
    plan = plan_recipe(replace(config.train, recipe="lp-ft"), tiny)  # random-init towers: nothing to probe first
    assert plan.recipe == "full" and "no tower to freeze first" in plan.reason
    assert plan_recipe(config.train, tiny).reason == "auto: no tower holds pretrained weights"


def test_unknown_recipe_is_a_one_line_error():
    with pytest.raises(ConfigError, match="train.recipe must be one of auto, full, frozen, lp-ft, got 'lpft'"):
        resolve({"train": {"recipe": "lpft"}})


def test_lp_ft_probes_on_cached_features_then_fine_tunes_from_the_probes_best(tiny_layers, text_dir, tmp_path):
    lines: list[str] = []
    trainers: list[Trainer] = []
    original = Trainer.__init__

    def recording(self, *args, **kwargs):
        original(self, *args, **kwargs)
        trainers.append(self)

    config = resolve(pretrained_layers(tiny_layers, text_dir, tmp_path / "run"))
    Trainer.__init__ = recording
    try:
        summary = finetune(config, echo=lines.append)
    finally:
        Trainer.__init__ = original
    assert any("recipe lp-ft (auto: pretrained text tower): probe 2 epochs with text frozen, then finetune "
               "2 epochs" in line for line in lines), lines
    assert any("cached frozen text features" in line for line in lines)
    assert any("stage 2/2 'finetune'" in line and "text at 0.00015" in line for line in lines), lines
    stages = [r["stage"] for r in summary["epochs"]]
    assert stages == ["probe", "probe", "finetune", "finetune"]
    assert [s["name"] for s in summary["recipe"]["stages"]] == ["probe", "finetune"]
    probe, tune = trainers
    # the probe trains no text weight; the fine-tuning stage trains them at encoder_lr (lr / 20), the head at lr / 10
    assert not any("text" in g["name"] for g in probe.optimizer.param_groups)
    rates = {g["name"].removesuffix("-no-decay"): g["initial_lr"] for g in tune.optimizer.param_groups}
    assert rates["text"] == pytest.approx(3e-3 / 20) and rates["head"] == pytest.approx(3e-4)
    assert rates["image"] == pytest.approx(3e-3)  # random-init: the head's rate of stage 1
    assert tune.step == summary["steps"] and probe.step < tune.step  # step counts carry over
    # the finetune stage started from the probe's best weights: its first record is no worse than chance would be
    # after a reset, and the text tower moved only in stage 2
    text_key = "encoders.text.backbone.embeddings.word_embeddings.weight"
    best = safetensors.torch.load_file(tmp_path / "run" / "checkpoints" / "best" / "model.safetensors")
    original_text = safetensors.torch.load_file(Path(text_dir) / "model.safetensors")
    moved = not (best[text_key] == original_text["embeddings.word_embeddings.weight"]).all()
    assert moved == (summary["best_epoch"] > 2)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records if "val_accuracy" in r] == stages


def test_a_crash_in_the_finetune_stage_resumes_into_it_and_matches(tiny_layers, text_dir, tmp_path, monkeypatch):
    layers = lambda out: pretrained_layers(tiny_layers, text_dir, out, checkpoint_every=2)  # noqa: E731
    reference = finetune(resolve(layers(tmp_path / "ref")), echo=lambda *_: None)
    per_epoch = reference["epochs"][0]["step"]
    config = resolve(layers(tmp_path / "run"))
    crash_run(config, 2 * per_epoch + 3, monkeypatch)  # three micro-steps into the finetune stage
    state = read_state(tmp_path / "run" / "checkpoints" / "resume")
    assert state["stage"] == 1 and state["stage_start"] == 3
    resumed = finetune(config, echo=lambda *_: None, resume=True)
    assert comparable(resumed) == comparable(reference)


def test_cli_prints_the_recipe_it_chose_and_honours_recipe_full(tiny_layers, text_dir, tmp_path, capsys):
    layers = pretrained_layers(tiny_layers, text_dir, tmp_path / "run", max_steps=3)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(layers))
    assert main(["finetune", "--config", str(tmp_path / "cfg.yaml"), "--no-progress", "--recipe", "full",
                 "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert "recipe full (train.recipe): train 2 epochs" in out
    assert main(["finetune", "--config", str(tmp_path / "cfg.yaml"), "--no-progress", "--overwrite"]) == 0
    out = capsys.readouterr().out  # no recipe flag: pretrained towers get LP-FT, and the run says so
    assert "mmfuse: recipe lp-ft (auto: pretrained text tower): probe 2 epochs with text frozen" in out


@pytest.mark.slow
def test_lp_ft_under_torchrun_ddp_takes_both_stages_over_every_sample(tiny_layers, text_dir, tmp_path):
    import subprocess
    import sys

    layers = pretrained_layers(tiny_layers, text_dir, tmp_path / "run", progress=False)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(layers))
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                               "-m", "mmfuse", "finetune", "--config", str(tmp_path / "cfg.yaml")],
                              capture_output=True, text=True)
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert "mmfuse: stage 2/2 'finetune'" in launched.stdout
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["world_size"] == 2 and summary["recipe"]["name"] == "lp-ft"
    assert [e["stage"] for e in summary["epochs"]] == ["probe", "probe", "finetune", "finetune"]
    assert all(e["train_samples"] == 96 for e in summary["epochs"])  # every sample once per epoch, over both ranks


def test_pretrained_cnn_towers_keep_their_batchnorm_statistics_while_fine_tuning(tiny_config):
    from mmfuse.encoders import create_encoder

    image = create_encoder("timm-image", model="tf_efficientnet_lite0", pretrained=False, image_size=32)
    image.pretrained = True  # as if its weights came from a checkpoint
    model, task = create_model_and_task(replace(tiny_config.model, labels=["a", "b"]))
    model.encoders["image"] = image
    model.projections["image"] = torch.nn.Linear(image.width, model.projections["text"].out_features)
    norms = [m for m in image.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = norms[0].running_mean.clone()
    batch = {"image": torch.randn(4, 3, 32, 32) * 3 + 1, "present_image": torch.ones(4, dtype=torch.bool)}
    Trainer(model, task, tiny_config.train, torch.device("cpu"), total_steps=4)
    model.train()
    assert model.training and not any(n.training for n in norms)  # eval-mode BatchNorm inside a training model
    model.encoders["image"](batch)
    assert torch.equal(norms[0].running_mean, before)  # statistics kept
    assert all(p.requires_grad for n in norms for p in n.parameters())  # scale and shift still learn
    Trainer(model, task, replace(tiny_config.train, keep_norm_statistics=False), torch.device("cpu"), total_steps=4)
    model.train()
    assert all(n.training for n in norms)
    model.encoders["image"](batch)
    assert not torch.equal(norms[0].running_mean, before)
