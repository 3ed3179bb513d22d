"""`mmfuse finetune`: flags and config layers -> `RunConfig` -> `mmfuse.finetune.finetune`.

Most flags set one config field: `FIELD_FLAGS` names them, and each flag's type, help and default come from that
field (its annotation, docstring and default in `mmfuse/config.py` / `mmfuse/model.py`). The rest (--preset,
--config, --set, --resume, --overwrite, --no-progress, --lora, the encoder flags) are written out below.
"""

from __future__ import annotations

import argparse
import ast
import functools
import inspect
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
    "--init-from": "train.init_from",
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
}
"""A flag's own words where its field's docstring reads as config, not as a command line."""

DEFAULT_TEXT = {"--modalities": "text,image"}
"""Defaults built by a factory (not literal in the source)."""

METAVARS = {"--init-from": "RUN_DIR"}

RESUME_TAKES = ("resume", "no_progress")
"""What --resume combines with: the rest of a resumed run's settings are its run_config.yaml."""

SECTIONS = (("model", "model.py", "ModelConfig"), ("data", "config.py", "DataConfig"),
            ("train", "config.py", "TrainConfig"), ("", "config.py", "RunConfig"))
TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list[str]": str}
"""Annotation -> the flag's type; a list is given comma-separated (the config splits it)."""


@dataclass(frozen=True)
class FieldDoc:
    annotation: str
    """The annotation's source, `| None` removed."""
    default: Any
    """The literal default, or None (none, None, or built by a factory)."""
    doc: str
    """The field's docstring, on one line."""


@functools.cache
def config_fields() -> dict[str, FieldDoc]:
    """`section.name` (or `name` at the top) -> FieldDoc of every field of the run config's dataclasses.

    Read from their source with `ast`: importing them would import torch just to print `--help`.
    """
    package = Path(__file__).resolve().parents[1]
    fields: dict[str, FieldDoc] = {}
    for section, filename, class_name in SECTIONS:
        tree = ast.parse((package / filename).read_text(encoding="utf-8"))
        body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name).body
        for node, after in zip(body, [*body[1:], None], strict=True):
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            annotation = ast.unparse(node.annotation).replace(" | None", "").replace("None | ", "")
            try:
                default = ast.literal_eval(node.value) if node.value is not None else None
            except ValueError:  # field(default_factory=...)
                default = None
            doc = ""
            if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and \
                    isinstance(after.value.value, str):
                doc = " ".join(inspect.cleandoc(after.value.value).split())
            fields[f"{section}.{node.target.id}" if section else node.target.id] = FieldDoc(annotation, default, doc)
    return fields


def add_field_flag(p: argparse.ArgumentParser, flag: str, key: str) -> None:
    """`flag` for config field `key`: its type, its docstring (or `HELP`) and default as help; argparse's own
    default stays None so that an absent flag leaves the lower config layers alone."""
    spec = config_fields()[key]
    text = HELP.get(flag) or spec.doc.rstrip(".")
    if text.split()[0].istitle():  # a docstring's sentence case, not a name like AdamW or RUN_DIR
        text = text[0].lower() + text[1:]
    text = f"{key}: {text}"
    default = DEFAULT_TEXT.get(flag, spec.default)
    if "(default" not in text and default is not None and default is not False:
        text += f" (default: {default})"
    text = text.replace("%", "%%")  # argparse %-formats help
    kind = TYPES[spec.annotation]
    if kind is bool:
        p.add_argument(flag, action="store_true", default=None, help=text)
    else:
        p.add_argument(flag, type=kind, metavar=METAVARS.get(flag), help=text)


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
