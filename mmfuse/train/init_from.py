"""`train.init_from` / `--init-from RUN_DIR`: start a new run from a finished run's weights.

The new model has the finished run's architecture (its saved config and encoder assets, so nothing downloads) and
task. Modalities, encoders, fusion and width must match the run's.

Tasks with a head row per name (classification and multilabel labels, regression targets) get the vocabulary
`the data's names, in dataset.json order, then the run's names the data lacks`: the dataset's indices stay valid,
every name the run knew keeps its trained head row (moved by name), and a name new to the model gets a freshly
initialised row. Rows of names the data lacks are kept but, for multilabel and regression, neither trained nor
scored (the tasks read the head's first columns, the data's). A regression target the run knew keeps the run's
standardisation (its row predicts in those units); a new one takes the data's. An interactions model's user vectors
are its rows (`labels` are the users): a user the run knew keeps its vector. Other tasks (contrastive: no head)
load every weight as it is.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CONFIG, read_checkpoint_config, read_weights, resolve_checkpoint_dir
from ..encoders.registry import split_encoder_name
from ..errors import ConfigError
from ..model import FusionModel, ModelConfig
from ..tasks import create_model_and_task, task_class


def source_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint to start from: `RUN_DIR/checkpoints/best` (else `last`), or RUN_DIR if it is a checkpoint."""
    run_dir = Path(run_dir)
    for candidate in (run_dir, run_dir / "checkpoints" / "best", run_dir / "checkpoints" / "last"):
        if (resolve_checkpoint_dir(candidate) / CONFIG).exists():
            return resolve_checkpoint_dir(candidate)
    raise ConfigError(f"--init-from {run_dir}: no checkpoint there (expected {run_dir}/checkpoints/best/{CONFIG})")


def check_compatible(new: ModelConfig, old: ModelConfig, asset_keys: dict[str, list[str]], source: Path) -> None:
    """Raise `ConfigError` naming the first field where the new run's model differs from the checkpoint's."""
    def differ(what: str, mine: Any, theirs: Any) -> ConfigError:
        return ConfigError(f"--init-from {source}: {what} differs: this run has {mine!r}, the checkpoint {theirs!r}")

    if new.task != old.task:
        raise differ("model.task", new.task, old.task)
    if sorted(new.modalities) != sorted(old.modalities):
        raise differ("model.modalities", sorted(new.modalities), sorted(old.modalities))
    for field in ("fusion", "dim", "fusion_kwargs", "adapters"):
        if getattr(new, field) != getattr(old, field):
            raise differ(f"model.{field}", getattr(new, field), getattr(old, field))
    for m in new.modalities:
        name, implied = split_encoder_name(new.encoders[m].name)
        if name != old.encoders[m].name:
            raise differ(f"model.encoders.{m}", new.encoders[m].name, old.encoders[m].name)
        for key, value in {**implied, **new.encoders[m].kwargs}.items():
            if key in asset_keys.get(m, []):
                continue  # a saved tokenizer / backbone config replaces e.g. `model`
            if old.encoders[m].kwargs.get(key) != value:
                raise differ(f"model.encoders.{m}.kwargs.{key}", value, old.encoders[m].kwargs.get(key))


def merged_labels(data_labels: list[str], run_labels: list[str]) -> list[str]:
    """The data's labels in order, then the run's labels the data does not have."""
    return list(data_labels) + [label for label in run_labels if label not in data_labels]


def init_from_run(run_dir: str | Path, config: ModelConfig) -> tuple[FusionModel, ModelConfig, dict[str, Any]]:
    """Build the new run's model from a finished run: returns (model, its config, a summary of the label rows).

    `config` is the new run's model config with the data's labels; call under the run's seed (new head rows are
    initialised like a fresh model's).
    """
    source = source_checkpoint(run_dir)
    old_config, _ = read_checkpoint_config(source)
    asset_keys = json.loads((source / CONFIG).read_text()).get("asset_kwargs", {})
    check_compatible(config, old_config, asset_keys, source)
    labels = merged_labels(config.labels, old_config.labels)
    task_kwargs = merged_task_kwargs(config, old_config, labels)
    new_config = replace(old_config, labels=labels, task_kwargs=task_kwargs, dropout=config.dropout,
                         modality_dropout=config.modality_dropout)
    model, _ = create_model_and_task(new_config)  # fresh head rows for new names come from here
    state = read_weights(source)
    rows = {f"head.{name}": state.pop(f"head.{name}") for name in task_class(old_config.task).label_rows
            if f"head.{name}" in state}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != set(rows):
        raise ConfigError(f"--init-from {source}: weights do not fit the model: missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}")
    kept = [label for label in labels if label in old_config.labels]
    with torch.no_grad():
        for label in kept if rows else []:
            row, old_row = labels.index(label), old_config.labels.index(label)
            for name, tensor in rows.items():
                model.get_parameter(name)[row] = tensor[old_row]
    summary = {"source": str(source), "kept": kept, "new": [label for label in labels if label not in kept]}
    for encoder in model.encoders.values():
        encoder.pretrained = True  # trained weights: they learn at encoder_lr like any pretrained tower
    return model, new_config, summary


def merged_task_kwargs(new: ModelConfig, old: ModelConfig, labels: list[str]) -> dict[str, Any]:
    """The run's task options; a regression's per-target standardisation follows the merged targets (`labels`):
    the run's mean / std for a target it knew, the data's for a new one."""
    kwargs = dict(old.task_kwargs)
    for key in ("target_mean", "target_std"):
        theirs, mine = old.task_kwargs.get(key), new.task_kwargs.get(key)
        if theirs is None or mine is None:
            continue
        kwargs[key] = [theirs[old.labels.index(name)] if name in old.labels else mine[new.labels.index(name)]
                       for name in labels]
    return kwargs
