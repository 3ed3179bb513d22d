"""`finetune(RunConfig)`: data -> model -> epochs -> best/last checkpoints -> test metrics. What the CLI runs.

A run directory holds:
    run_config.yaml            the resolved run config
    metrics.jsonl              one record per logged step and per epoch
    metrics.json               final summary: best epoch, val and test metrics, skipped samples, timings
    checkpoints/{best,last}/   model.safetensors + config.json + assets
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import RunConfig, dump_yaml
from .data.demo import demo_dataset
from .data.info import DatasetInfo
from .data.loader import make_loader
from .errors import DataError
from .model import build_model
from .train.checkpoint import load_checkpoint, save_checkpoint
from .train.precision import resolve_device
from .train.trainer import MetricsLog, Trainer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_run_dir(config: RunConfig) -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{'-'.join(config.model.modalities)}"


def data_summary(skipped: Counter[str], ignored: Counter[str]) -> str:
    """The closing line about the data: samples skipped per reason, shard members ignored (never decoded)."""
    line = f"mmfuse: skipped {sum(skipped.values())} samples"
    if skipped:
        line += ": " + ", ".join(f"{reason} x{n}" for reason, n in skipped.most_common())
    if ignored:
        line += "; ignored shard members: " + ", ".join(f"{kind} x{n}" for kind, n in ignored.most_common())
    return line


def finetune(config: RunConfig, echo: Any = print) -> dict[str, Any]:
    """Train `config.model` on `config.data`, evaluate each epoch, test the best checkpoint. Returns metrics.json."""
    started = time.perf_counter()
    info = DatasetInfo.load(config.data.path or demo_dataset(), verify=config.data.verify_shards)
    info.require_modalities(config.model.modalities)
    for split in (config.data.train_split, config.data.val_split, config.data.test_split):
        info.require_split(split)
    model_config = replace(config.model, labels=list(info.labels))
    out = Path(config.out) if config.out else default_run_dir(config)
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(replace(config, out=str(out), data=replace(config.data, path=str(info.root))), out / "run_config.yaml")

    device = resolve_device(config.train.device)
    seed_everything(config.train.seed)
    model = build_model(model_config)
    data, train = config.data, config.train
    epoch_samples = (data.epoch_samples or info.count(data.train_split)) if data.resampled \
        else info.count(data.train_split)
    micro_batches = math.ceil(epoch_samples / data.batch_size)
    steps_per_epoch = max(1, micro_batches // train.grad_accum)
    total_steps = steps_per_epoch * train.epochs
    if train.max_steps is not None:
        total_steps = min(total_steps, train.max_steps)
    trainer = Trainer(model, train, device, total_steps)
    preprocessors = model.preprocessors()
    loader_kwargs = {"num_workers": data.num_workers, "pin_memory": device.type == "cuda", "strict": data.strict}

    def eval_loader(split: str):
        return make_loader(info, split, preprocessors, data.eval_batch_size, **loader_kwargs)

    log = MetricsLog(out / "metrics.jsonl")
    echo(f"mmfuse: fine-tuning {'+'.join(model_config.modalities)} with '{model_config.fusion}' fusion on "
         f"{info.root} ({info.count(data.train_split)} train samples, {len(info.labels)} labels), "
         f"{device} {trainer.precision}, {total_steps} steps -> {out}")
    best: dict[str, Any] = {"epoch": 0, "accuracy": -1.0}
    skipped: Counter[str] = Counter()
    ignored: Counter[str] = Counter()

    def tally(loader):  # shard members the loader ignored (pickle), reported beside the skipped samples
        for batch in loader:
            ignored.update(batch.get("ignored", {}))
            yield batch

    epoch_records = []
    for epoch in range(1, train.epochs + 1):
        loader = make_loader(info, data.train_split, preprocessors, data.batch_size, shuffle=True, seed=train.seed,
                             epoch=epoch, shuffle_buffer=data.shuffle_buffer, resampled=data.resampled,
                             epoch_samples=epoch_samples, **loader_kwargs)
        bar = tqdm(total=micro_batches, desc=f"epoch {epoch}/{train.epochs}", disable=not train.progress,
                   leave=False, dynamic_ncols=True)
        stats = trainer.train_epoch(tally(loader), lambda r, e=epoch: log.write({"epoch": e, **r}), bar)
        bar.close()
        skipped.update(stats["skipped"])
        val = trainer.evaluate(tally(eval_loader(data.val_split)), len(info.labels))
        skipped.update(val["skipped"])
        record = {"epoch": epoch, "step": trainer.step, "train_loss": stats["loss"], "train_samples": stats["samples"],
                  "train_skipped": sum(stats["skipped"].values()),
                  "data_s": stats["data_s"], "compute_s": stats["compute_s"],
                  "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"]}
        log.write(record)
        epoch_records.append(record)
        echo(f"epoch {epoch}: loss {stats['loss']:.4f}  val accuracy {val['accuracy']:.4f}  "
             f"macro-F1 {val['macro_f1']:.4f}  ({stats['samples']} samples, data {stats['data_s']:.1f}s, "
             f"compute {stats['compute_s']:.1f}s)")
        save_checkpoint(trainer.model, model_config, out / "checkpoints" / "last", {"epoch": epoch})
        if val["accuracy"] > best["accuracy"]:
            best = {"epoch": epoch, "accuracy": val["accuracy"], "macro_f1": val["macro_f1"]}
            save_checkpoint(trainer.model, model_config, out / "checkpoints" / "best", {"epoch": epoch})
        if train.max_steps is not None and trainer.step >= train.max_steps:
            break

    best_model, _, _ = load_checkpoint(out / "checkpoints" / "best")
    trainer.model.load_state_dict(best_model.state_dict())
    test = trainer.evaluate(tally(eval_loader(data.test_split)), len(info.labels))
    skipped.update(test["skipped"])
    summary = {
        "modalities": model_config.modalities, "fusion": model_config.fusion, "labels": model_config.labels,
        "best_epoch": best["epoch"], "val": {k: v for k, v in best.items() if k != "epoch"},
        "test": {k: test[k] for k in ("accuracy", "macro_f1", "count")},
        "skipped": dict(skipped), "skipped_total": sum(skipped.values()), "ignored_members": dict(ignored),
        "epochs": epoch_records, "steps": trainer.step, "device": str(device), "precision": trainer.precision,
        "train_time_s": round(time.perf_counter() - started, 1), "data": str(info.root),
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    echo(data_summary(skipped, ignored))
    expected = info.count(data.test_split)
    if test["count"] + sum(test["skipped"].values()) != expected:
        raise DataError(f"test split: read {test['count']} + skipped {sum(test['skipped'].values())} samples, "
                        f"dataset.json says {expected}")
    echo(f"test accuracy ({'+'.join(model_config.modalities)}, best epoch {best['epoch']}): "
         f"{test['accuracy']:.4f}  macro-F1 {test['macro_f1']:.4f}  [{out / 'metrics.json'}]")
    return summary
