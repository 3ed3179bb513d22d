"""Run configuration: dataclasses whose fields are documented and validated (litgpt's `args.py`).

A run config is YAML with three sections, `model`, `data` and `train`, plus `out`. Unknown keys are errors, named
with their dotted path. Precedence: defaults < `--config FILE` < CLI flags < `--set key=value`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, did_you_mean
from .model_config import MODALITIES, ModelConfig, default_encoders

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RECIPES = ("auto", "full", "frozen", "lp-ft")
AUGMENTS = ("auto", "none", "light", "trivial")
ENCODER_LR_DIVISOR = 20
"""`train.encoder_lr` unset: pretrained towers learn at `lr` / this."""


@dataclass
class DataConfig:
    path: str | None = None
    """Shard directory with a dataset.json; None uses the embedded demo dataset (generated once, then cached)."""
    batch_size: int = 64
    """Training samples per optimizer micro-step."""
    eval_batch_size: int = 128
    """Samples per evaluation batch."""
    num_workers: int = 0
    """Loader worker processes (capped at the number of shards); 0-1 suits a 2-core CPU."""
    shuffle_buffer: int = 1000
    """Size of the sample shuffle buffer (after shards are shuffled)."""
    strict: bool = False
    """Stop at the first sample that fails to decode instead of skipping and counting it."""
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    verify_shards: bool = False
    """Check every shard's sha256 against dataset.json before training (sizes are always checked)."""
    resampled: bool = False
    """Draw training shards with replacement (seeded) for a fixed epoch length instead of one pass over each."""
    epoch_samples: int | None = None
    """Training samples per epoch when `resampled` (default: the train split's count)."""

    def __post_init__(self) -> None:
        _positive(self, "batch_size", "eval_batch_size", "shuffle_buffer")
        if self.num_workers < 0:
            raise ConfigError("data.num_workers must be >= 0")
        if self.epoch_samples is not None and self.epoch_samples < 1:
            raise ConfigError("data.epoch_samples must be >= 1")


@dataclass
class TrainConfig:
    recipe: str = "auto"
    """auto | full | frozen | lp-ft: how pretrained towers train (docs/recipes.md). full: one stage, every tower
    not in `freeze` trains. frozen: towers with pretrained weights stay frozen (their outputs cached), fusion, head
    and random-init towers train. lp-ft: stage 1 `probe` as frozen for up to `probe_epochs` (early-stopped after
    `probe_patience` epochs without a better val metric), then stage 2 `finetune` from stage 1's best weights with the
    towers unfrozen (whole, their top `unfreeze_top` blocks, or their adapters) for `epochs`, the head at
    `finetune_head_lr_scale` x `lr`. auto: lp-ft when a tower holds pretrained weights and neither `freeze` nor
    `init_from` is set, else full; on a train split under `small_data_items` it also swaps random-init towers that
    have a registered small-data encoder (tiny-audio -> logmel-stats) before the model is built."""
    small_data_items: int = 5000
    """recipe auto: a train split with fewer items is small, and each random-init tower with a registered small-data
    encoder (`register_encoder(small_data_for=...)`) trains that encoder instead, written to run_config.yaml and the
    checkpoints (docs/recipes.md); 0 never swaps. An explicit `recipe` keeps the towers as named."""
    epochs: int = 10
    """Passes over the training split (with recipe lp-ft: of stage 2, after the probe's epochs)."""
    probe_epochs: int = 20
    """lp-ft stage 1: the most epochs of training fusion + head on the frozen (cached) towers."""
    probe_patience: int = 3
    """lp-ft stage 1 ends once the val metric has not improved for this many epochs."""
    finetune_head_lr_scale: float = 0.1
    """lp-ft stage 2: the head and fusion (already trained by the probe) learn at this x `lr`."""
    lr: float = 2e-3
    """Peak learning rate of the fusion, projections, head and random-init towers."""
    encoder_lr: float | None = None
    """Peak learning rate of towers that hold pretrained weights (None: `lr` / 20). A random-init tower (`tiny-*`,
    `pretrained: false`) trains at `lr` unless `tower_lr` names it."""
    weight_decay: float = 0.05
    """AdamW weight decay (not applied to biases, norms and embeddings)."""
    warmup: float = 0.05
    """Fraction of the optimizer steps spent in linear warm-up before cosine decay to zero."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    precision: str = "auto"
    """auto | fp32 | bf16 | fp16. auto: bf16 (fp16 without bf16 support) on CUDA; on a CPU, bf16 where it has
    avx512_bf16 or AMX and the model has an encoder at least 256 wide (narrower towers run slower in bf16), else fp32
    (bf16 without those instructions is 2-3x slower)."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N."""
    seed: int = 0
    """Seed of model init, shuffling and dropout."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (for smoke tests); None trains all epochs."""
    log_every: int = 20
    """Write a train record to metrics.jsonl every this many steps."""
    progress: bool = True
    """Show a progress bar."""
    freeze: list[str] = field(default_factory=list)
    """Towers (modalities) whose encoder is frozen, e.g. [text, image]."""
    unfreeze_top: int = 0
    """With `freeze`: still train the top k layers of each frozen tower (backends that have layers)."""
    tower_lr: dict[str, float] = field(default_factory=dict)
    """Per-tower learning rates overriding `encoder_lr`, e.g. {text: 3e-5, image: 1e-4}; `head` is the rest."""
    grad_checkpointing: bool = False
    """Recompute encoder activations in the backward pass: less memory, 27-34% slower (a memory lever only)."""
    checkpoint_every: int = 100
    """Write a resumable checkpoint (checkpoints/resume) every this many optimizer steps; 0: at epoch ends only."""
    keep_norm_statistics: bool = True
    """Towers holding pretrained weights keep their BatchNorm running statistics while they fine-tune (BatchNorm in
    eval mode; its scale and shift still learn): small batches of new data would otherwise replace the pretraining
    statistics and shift every feature a probe's head learned on. False: BatchNorm trains as usual."""
    layer_decay: float | None = None
    """Layer-wise learning-rate decay in (0, 1], e.g. 0.75: an encoder's block k of L learns at
    decay^(L+1-k) x its tower's rate, its embeddings at decay^(L+1), layers after the blocks at the full rate."""
    compile: bool = False
    """`torch.compile` the model (inductor); the step speed it gives is the bench's `lever` case (docs/scaling.md)."""
    tensorboard: bool = False
    """Also log metrics.jsonl's records to <out>/tensorboard (rank 0; needs `pip install 'mmfuse[tensorboard]'`)."""
    strategy: str = "ddp"
    """Under torchrun: ddp (replicate the model) or fsdp (FSDP2 `fully_shard`: parameters, gradients and optimizer
    state sharded over the processes)."""
    init_from: str | None = None
    """Start from a finished run's weights (RUN_DIR or a checkpoint directory): same modalities, encoders and
    fusion; its labels are kept and the data's new labels get new head rows."""
    cache_frozen: bool = True
    """Encode each split once for towers with no trainable parameter (frozen without unfreeze_top or adapters) and
    train fusion + head on the cached outputs: later epochs neither decode nor encode those modalities."""
    cache_dir: str | None = None
    """Also keep cached features as safetensors here, reused by runs with the same frozen encoder and shards
    (None: in memory for this run only)."""
    early_stopping_patience: int = 0
    """Stop once the task's best metric (val accuracy, mAP, RMSE, mean recall) has not improved for this many
    epochs; 0: train every epoch."""
    keep_best: int = 1
    """Keep the checkpoints of this many best epochs in checkpoints/top/epoch-NNNN (with an index.json); 1: only
    checkpoints/best."""
    nonfinite: str = "stop"
    """A micro-batch whose loss is NaN or Inf: `stop` the run with an error naming the step and the batch's sample
    keys (no checkpoint is written after it), or `skip` it (no gradient from it; counted and reported). `skip`
    reads every loss on the host (one device sync per micro-batch); `stop` reads them at the progress/log reads."""
    augment: str = "auto"
    """auto | none | light | trivial: image augmentation of training batches (docs/recipes.md), applied only in
    stages where the image tower trains; never in a stage where it is frozen (its cached features are of unaugmented
    images, and an uncached frozen tower is treated alike, so `cache_frozen` does not change results), nor to
    val / test / embedding / serving. light: random resized crop (70-100% of the area), rotation up to 10 degrees,
    5% shift, mild colour jitter; no flip (flips corrupt digits and text). trivial: TrivialAugmentWide (strong:
    rotations up to 135 degrees; for natural photos). auto: light for a pretrained image tower, none for a
    random-init one. Seeded per (seed, epoch, sample key)."""

    def __post_init__(self) -> None:
        _finite(self)
        _positive(self, "epochs", "lr", "grad_accum", "log_every")
        if self.encoder_lr is not None and self.encoder_lr <= 0:
            raise ConfigError(f"train.encoder_lr must be > 0, got {self.encoder_lr}")
        for tower, lr in self.tower_lr.items():
            if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0:
                raise ConfigError(f"train.tower_lr.{tower} must be a finite number > 0, got {lr!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if self.grad_clip < 0:
            raise ConfigError(f"train.grad_clip must be >= 0 (0 disables clipping), got {self.grad_clip}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"train.max_steps must be >= 1 (or null: train every epoch), got {self.max_steps}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"train.seed must be in [0, 2**32), got {self.seed}")
        if self.nonfinite not in ("stop", "skip"):
            raise ConfigError(f"train.nonfinite must be stop or skip, got '{self.nonfinite}'")
        if self.recipe not in RECIPES:
            raise ConfigError(f"train.recipe must be one of {', '.join(RECIPES)}, got '{self.recipe}'"
                              f"{did_you_mean(self.recipe, RECIPES)}")
        if self.small_data_items < 0:
            raise ConfigError(f"train.small_data_items must be >= 0 (0: never swap a tower), got "
                              f"{self.small_data_items}")
        if self.probe_epochs < 1 or self.probe_patience < 0:
            raise ConfigError("train.probe_epochs must be >= 1 and train.probe_patience >= 0")
        if not 0 < self.finetune_head_lr_scale <= 1:
            raise ConfigError(f"train.finetune_head_lr_scale must be in (0, 1], got {self.finetune_head_lr_scale}")
        if self.augment not in AUGMENTS:
            raise ConfigError(f"train.augment must be one of {', '.join(AUGMENTS)}, got '{self.augment}'"
                              f"{did_you_mean(self.augment, AUGMENTS)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"train.warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        for tower in [*self.freeze, *self.tower_lr]:
            if tower not in (*MODALITIES, "head"):
                raise ConfigError(f"unknown tower '{tower}' in train.freeze / train.tower_lr"
                                  f"{did_you_mean(tower, MODALITIES)}")
        if self.strategy not in ("ddp", "fsdp"):
            raise ConfigError(f"train.strategy must be ddp or fsdp, got '{self.strategy}'")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ConfigError(f"train.layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.checkpoint_every < 0 or self.unfreeze_top < 0:
            raise ConfigError("train.checkpoint_every and train.unfreeze_top must be >= 0")
        if self.early_stopping_patience < 0 or self.keep_best < 1:
            raise ConfigError("train.early_stopping_patience must be >= 0 and train.keep_best >= 1")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=lambda: ModelConfig(["text", "image"], default_encoders()))
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str | None = None
    """Run directory; None: runs/<date>-<time>-<modalities>."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _finite(obj: Any) -> None:
    """Refuse NaN and Inf in a config's float fields (a NaN passes every `<=` check)."""
    section = type(obj).__name__.replace("Config", "").lower()
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{section}.{f.name} must be a finite number, got {value}")


def _positive(obj: Any, *names: str) -> None:
    section = type(obj).__name__.replace("Config", "").lower()
    for name in names:
        if getattr(obj, name) <= 0:
            raise ConfigError(f"{section}.{name} must be > 0, got {getattr(obj, name)}")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a type hint, converting YAML strings like '3e-4' where unambiguous."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if hint is Any:
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        _, value_hint = typing.get_args(hint) or (str, Any)
        return {k: _coerce(v, value_hint, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (item_hint,) = typing.get_args(hint) or (Any,)
        return [_coerce(v, item_hint, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        try:
            number = float(value) if hint is float else int(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(
                f"{where} must be {'a number' if hint is float else 'an integer'}, got {value!r}") from None
        if hint is float and not math.isfinite(number):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        if hint is int and isinstance(value, float) and value != int(value):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise `ConfigError` naming the key."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{path}'{did_you_mean(str(key), names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"{where or 'config'}: {err}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"config file {path} is a directory: pass a YAML file (see configs/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text YAML file (not UTF-8)") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err.strerror}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping with model/data/train sections")
    return data


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; `update` wins."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def set_dotted(data: dict[str, Any], assignment: str) -> None:
    """Apply 'train.lr=3e-4' to a nested dict (the value is parsed as YAML)."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects KEY=VALUE, got '{assignment}'")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: '{part}' is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def resolve(*layers: dict[str, Any]) -> RunConfig:
    """Merge config layers over the defaults and validate them into a `RunConfig`."""
    data = RunConfig().to_dict()
    for layer in layers:
        encoders = layer.get("model", {}).get("encoders", {}) if isinstance(layer.get("model"), dict) else {}
        for m, spec in encoders.items() if isinstance(encoders, dict) else ():
            if isinstance(spec, dict) and "name" in spec:  # naming an encoder replaces the spec, kwargs and all
                data["model"]["encoders"].pop(m, None)
        data = merge(data, layer)
    model = data.get("model", {})
    if isinstance(model, dict) and isinstance(model.get("modalities"), (str, list)):
        modalities = model["modalities"]
        if isinstance(modalities, str):
            modalities = [m.strip() for m in modalities.split(",") if m.strip()]
        for m in modalities:
            if m not in MODALITIES:
                raise ConfigError(f"unknown modality '{m}'{did_you_mean(m, MODALITIES)}; choose from "
                                  f"{', '.join(MODALITIES)}")
    return from_dict(RunConfig, data)


def dump_yaml(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
