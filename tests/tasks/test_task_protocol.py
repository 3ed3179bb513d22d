"""The task protocol, checked on every registered task (as fusions and encoders are): a task builds its head and
alignment, trains a step on its own kind of data, evaluates to its declared metrics and describes them. And a model
assembled by hand trains with the task handed to the trainer beside it."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL

from mmfuse.cli import main
from mmfuse.config import TrainConfig, resolve
from mmfuse.data.demo import DemoSpec, build_demo
from mmfuse.data.demo_manifest import write_demo_manifest
from mmfuse.data.info import DatasetInfo
from mmfuse.data.loader import make_loader
from mmfuse.encoders import create_encoder
from mmfuse.errors import ConfigError
from mmfuse.fusion import create_fusion
from mmfuse.model import ClassificationHead, FusionModel
from mmfuse.tasks import create_model_and_task, list_tasks, task_class
from mmfuse.tasks.classification import ClassificationTask
from mmfuse.train.trainer import Trainer

CPU = torch.device("cpu")
TRAIN = TrainConfig(lr=3e-3, precision="fp32", progress=False)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, demo_shards) -> dict[str, Path]:
    """One dataset per kind: the demo (classification), the demo catalogue sharded as multilabel and regression,
    and the demo with users (interactions)."""
    root = tmp_path_factory.mktemp("kinds")
    manifest = write_demo_manifest(root / "catalogue", 96, seed=3)
    common = ["shard", "--manifest", str(manifest), "--text", "title", "--no-progress",
              "--fractions", "train=0.6,val=0.2,test=0.2"]
    out = {"classification": demo_shards, "none": demo_shards}
    for kind, extra in (("multilabel", ["--task", "multilabel", "--label", "tags"]),
                        ("regression", ["--task", "regression", "--targets", "price"])):
        assert main([*common, "--out", str(root / kind), *extra]) == 0
        out[kind] = root / kind
    spec = DemoSpec(train=96, val=32, test=40, image_size=32, shard_size=32, interactions=True, users=24)
    out["interactions"] = build_demo(root / "interactions", spec)
    return out


@pytest.mark.parametrize("name", list_tasks())
def test_every_task_trains_a_step_and_evaluates_to_its_metrics(name, datasets):
    cls = task_class(name)
    info = DatasetInfo.load(datasets[cls.data_kinds[0]])
    config = cls.prepare(resolve({"model": {**TINY_MODEL, "task": name}}).model, info)
    torch.manual_seed(0)
    model, task = create_model_and_task(config)
    assert task.name == name and isinstance(task.summary(), str) and task.summary()
    assert (model.alignment is not None) == task.aligns
    assert not hasattr(model, "task")  # the model knows no task

    trainer = Trainer(model, task, TRAIN, CPU, total_steps=10)
    loader = make_loader(info, "train", model.preprocessors(), 16, target=task.target)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    batches = [b for b, _ in zip(loader, range(2), strict=False)]
    losses = [trainer.train_step(b).item() for b in batches]
    assert trainer.step == 2 and all(math.isfinite(v) and v > 0 for v in losses), losses
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)

    val = make_loader(info, "val", model.preprocessors(), 16, target=task.target)
    reference = make_loader(info, "train", model.preprocessors(), 16, target=task.target) \
        if task.needs_reference else None
    metrics = trainer.evaluate(val, reference=reference)
    assert set(task.metric_names) <= set(metrics) and task.best_metric in task.metric_names
    assert all(math.isfinite(metrics[k]) for k in task.metric_names), metrics
    assert metrics["count"] == info.count("val") and metrics["skipped"] == {}
    line = task.describe(metrics)
    (_, first), *_ = task.describe_parts(metrics)  # the best metric leads the final line (finetune's "test ...")
    assert first == f"{metrics[task.best_metric]:.4f}" and first in line, (line, metrics)

    model.eval()
    with torch.no_grad():
        head = model(to_batch(batches[0]))
    if model.head is None or name == "interactions":  # embeddings only: predicting is refused in one line
        with pytest.raises(ConfigError, match="predicts no labels"):
            task.predict(head)
    else:
        assert len(task.predict(head)) == len(batches[0]["key"])


def to_batch(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in ("skipped", "ignored", "cursor")}


def test_a_model_assembled_by_hand_trains_with_the_task_beside_it(demo_shards):
    info = DatasetInfo.load(demo_shards)
    encoders = {"text": create_encoder("tiny-text", width=16, layers=1, heads=2),
                "image": create_encoder("tiny-image", width=16, layers=1, heads=2, image_size=32)}
    model = FusionModel(encoders, create_fusion("concat-mlp", modalities=["image", "text"], dim=32),
                        ClassificationHead(32, len(info.labels)))
    task = ClassificationTask.for_head(model)
    assert task.labels == [str(i) for i in range(len(info.labels))] and not task.aligns
    trainer = Trainer(model, task, replace(TRAIN, lr=1e-2), CPU, total_steps=20)
    batch = next(iter(make_loader(info, "train", model.preprocessors(), 32)))
    model.eval()  # no dropout: the same function before and after
    with torch.no_grad():
        first = task.loss(model(batch, outputs=True), batch).item()
    model.train()
    for _ in range(8):
        trainer.train_step(batch)
    model.eval()
    with torch.no_grad():
        last = task.loss(model(batch, outputs=True), batch).item()
    assert last < first * 0.8, (first, last)
    val = list(make_loader(info, "val", model.preprocessors(), 16))
    metrics = trainer.evaluate(val)
    with torch.no_grad():  # the head's own argmax, counted by hand
        right = sum(int((model(b).argmax(-1) == b["label"]).sum()) for b in val)
    assert metrics["count"] == info.count("val") and metrics["accuracy"] == pytest.approx(right / info.count("val"))
