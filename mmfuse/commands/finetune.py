"""`mmfuse finetune`: flags and config layers -> `RunConfig` -> `mmfuse.finetune.finetune`.

Most flags set one config field: `FIELD_FLAGS` names them, and each flag's type, help and default come from that
field (its annotation, docstring and default in `mmfuse/config.py`). The rest (--preset, --config, --set, --resume,
--overwrite, --no-progress, --lora, the encoder flags) are written out below.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .common import HelpFormatter

FIELD_FLAGS: dict[str, str] = {
    "--modalities": "model.modalities",
    "--data": "data.path",
    "--out": "out",
    "--epochs": "train.epochs",
    "--fusion": "model.fusion",
    "--task": "model.task",
    "--batch-size": "data.batch_size",
    "--lr": "train.lr",
    "--max-steps": "train.max_steps",
    "--seed": "train.seed",
    "--device": "train.device",
    "--precision": "train.precision",
    "--workers": "data.num_workers",
    "--strict": "data.strict",
    "--freeze": "train.freeze",
    "--recipe": "train.recipe",
    "--probe-epochs": "train.probe_epochs",
    "--encoder-lr": "train.encoder_lr",
    "--init-from": "train.init_from",
    "--augment": "train.augment",
}
"""Flag -> the config field it sets (`section.name`). A field's flag is one line here."""

HELP = {
    "--modalities": "comma-separated modalities to fuse, from text,image,audio",
    "--data": "shard directory with a dataset.json (default: the embedded demo dataset)",
    "--out": "run directory for checkpoints and metrics (default: runs/<time>-<modalities>); one holding another "
             "run is refused unless --overwrite",
    "--task": "classification, multilabel, regression, contrastive or interactions; the dataset must hold that kind "
              "of target (`mmfuse shard --task`)",
    "--max-steps": "stop after this many optimizer steps (smoke tests)",
    "--precision": "auto, fp32, bf16 or fp16; auto picks by the hardware and the widest encoder",
    "--freeze": "comma-separated towers whose encoders stay frozen, e.g. text,image",
    "--augment": "image augmentation of training batches: auto (light where the image tower trains, none where it "
                 "is frozen or cached), none, light (crop 70-100%, rotate <= 10 degrees, shift 5%, mild colour "
                 "jitter; no flip) or trivial (TrivialAugmentWide); never val/test",
}
"""A flag's own words where its field's docstring reads as config, not as a command line."""

METAVARS = {"--init-from": "RUN_DIR"}

RESUME_TAKES = ("resume", "no_progress")
"""What --resume combines with: the rest of a resumed run's settings are its run_config.yaml."""


@dataclass(frozen=True)
class FieldDoc:
    kind: type | None
    """The flag's type: int, float, str or bool; str for a list (given comma-separated, the config splits it);
    None for a field no flag can give (a mapping)."""
    default: Any
    """The field's value in a default `RunConfig` (what a run without this setting gets)."""
    doc: str
    """The field's docstring, on one line ('' if it has none)."""


@functools.cache
def config_fields() -> dict[str, FieldDoc]:
    """`section.name` (`name` at the top) -> FieldDoc of every field of `RunConfig` and its sections."""
    from ..config import DataConfig, ModelConfig, RunConfig, TrainConfig

    defaults = RunConfig().to_dict()
    fields: dict[str, FieldDoc] = {}
    for section, cls in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig), ("", RunConfig)):
        hints, docs = typing.get_type_hints(cls), field_docstrings(cls)
        for f in dataclasses.fields(cls):
            key = f"{section}.{f.name}" if section else f.name
            default = defaults[section][f.name] if section else defaults[f.name]
            fields[key] = FieldDoc(_flag_type(hints[f.name]), default, docs.get(f.name, ""))
    return fields


def field_docstrings(cls: type) -> dict[str, str]:
    """A dataclass's field docstrings (the string literal under a field), each on one line."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr) \
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def _flag_type(hint: Any) -> type | None:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = options[0] if len(options) == 1 else None
    if typing.get_origin(hint) is list:
        return str
    return hint if hint in (int, float, str, bool) else None


def add_field_flag(p: argparse.ArgumentParser, flag: str, key: str) -> None:
    """`flag` for config field `key`: its type, its docstring (or `HELP`) and default as help; argparse's own
    default stays None so that an absent flag leaves the lower config layers alone."""
    spec = config_fields()[key]
    if spec.kind is None:
        raise TypeError(f"{flag}: config field {key} takes no command-line value")
    text = HELP.get(flag) or spec.doc.rstrip(".")
    if text.split()[0].istitle():  # a docstring's sentence case, not a name like AdamW or RUN_DIR
        text = text[0].lower() + text[1:]
    text = f"{key}: {text}"
    default = ",".join(map(str, spec.default)) if isinstance(spec.default, list) else spec.default
    if "(default" not in text and default is not None and default is not False and default != "":
        text += f" (default: {default})"
    text = text.replace("%", "%%")  # argparse %-formats help
    if spec.kind is bool:
        p.add_argument(flag, action="store_true", default=None, help=text)
    else:
        p.add_argument(flag, type=spec.kind, metavar=METAVARS.get(flag), help=text)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune a fusion model (default: the embedded demo data)",
        description="Fine-tune encoders + fusion + classifier jointly, evaluate every epoch, test the best "
                    "checkpoint. Settings come from the defaults, then --preset, then --config, then these flags, "
                    "then --set.",
        formatter_class=HelpFormatter)
    for flag, key in FIELD_FLAGS.items():
        add_field_flag(p, flag, key)
    p.add_argument("--config", help="run config YAML with model/data/train sections (see configs/)")
    p.add_argument("--preset", help="a model preset from mmfuse/model_configs (see `mmfuse list`) or a JSON file; "
                                    "--config, flags and --set override it")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out that holds another run: its checkpoints, metrics and "
                        "run_config.yaml are removed first")
    p.add_argument("--text-encoder", help="text encoder, e.g. tiny-text, hf-text:bert-base-uncased, "
                                          "hf-text:/path/to/model")
    p.add_argument("--image-encoder", help="image encoder, e.g. tiny-image, timm-image:vit_small_patch16_224")
    p.add_argument("--audio-encoder", help="audio encoder, e.g. tiny-audio, timm-audio:vit_base_patch16_224, "
                                           "hf-audio:/path/to/ast-or-wav2vec2-or-whisper")
    p.add_argument("--lora", help="comma-separated towers fine-tuned with LoRA adapters (r=8) instead of fully, "
                                  "e.g. text; finer control: --set model.adapters.text.r=16")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run exactly where its last resumable checkpoint left it, with its "
                        "run_config.yaml's settings (only --no-progress may join it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (train.progress=false)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.weight_decay=0.1 (repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_yaml, resolve, set_dotted
    from ..finetune import finetune
    from .common import say

    if args.resume:
        others = [f"--{dest.replace('_', '-')}" for dest, value in vars(args).items()
                  if dest not in (*RESUME_TAKES, "func", "command") and _given(value)]
        if others:
            raise ConfigError(f"--resume continues a run with its own run_config.yaml and takes no other setting; "
                              f"drop {' '.join(others)}")
        run_config = Path(args.resume) / "run_config.yaml"
        if not run_config.is_file():
            raise ConfigError(f"--resume {args.resume} holds no run to resume ({run_config.name} is missing)")
        # the run in RUN_DIR itself, wherever it was moved or copied (not the `out` its run_config.yaml names)
        config = resolve(load_yaml(run_config), {"out": str(args.resume)},
                         {"train": {"progress": False}} if args.no_progress else {})
        finetune(config, echo=say, resume=True)
        return 0
    preset_layer: dict[str, Any] = {}
    if args.preset is not None:
        from ..presets import load_preset

        preset_layer = {"model": load_preset(args.preset)}
    file_layer = load_yaml(args.config) if args.config else {}
    flags: dict[str, Any] = {"model": {}, "data": {}, "train": {}}
    for flag, key in FIELD_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            *sections, name = key.split(".")
            node = flags
            for section in sections:
                node = node[section]
            node[name] = value
    encoders = {m: getattr(args, f"{m}_encoder") for m in ("text", "image", "audio")}
    flags["model"]["encoders"] = {m: {"name": n, "kwargs": {}} for m, n in encoders.items() if n}
    if args.no_progress:
        flags["train"]["progress"] = False
    if args.lora:
        flags["model"]["adapters"] = {t.strip(): {"method": "lora"} for t in args.lora.split(",") if t.strip()}
    overrides: dict[str, Any] = {}
    for assignment in args.set:
        set_dotted(overrides, assignment)
    try:
        config = resolve(preset_layer, file_layer, flags, overrides)
    except ConfigError as err:
        if preset_layer and str(err) == _alone(preset_layer):  # the preset's own mistake: name its file
            raise ConfigError(f"--preset {args.preset}: {err}") from None
        raise
    finetune(config, echo=say, overwrite=args.overwrite)
    return 0


def _given(value: Any) -> bool:
    """A flag's value differs from its absent default (None, a switch's False, --set's empty list)."""
    return value is not None and value is not False and value != []


def _alone(layer: dict[str, Any]) -> str | None:
    """The error a config layer raises over the defaults alone, or None."""
    from ..config import resolve

    try:
        resolve(layer)
    except ConfigError as err:
        return str(err)
    return None
