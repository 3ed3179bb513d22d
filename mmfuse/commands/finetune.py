"""`mmfuse finetune`: flags and config layers -> `RunConfig` -> `mmfuse.finetune.finetune`."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune a fusion model (default: the embedded demo data)",
        description="Fine-tune encoders + fusion + classifier jointly, evaluate every epoch, test the best "
                    "checkpoint. Settings come from the defaults, then --config, then these flags, then --set.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--modalities", help="comma-separated modalities to fuse, from text,image,audio "
                                        "(default: text,image)")
    p.add_argument("--config", help="run config YAML with model/data/train sections (see configs/)")
    p.add_argument("--data", help="shard directory with a dataset.json (default: the embedded demo dataset)")
    p.add_argument("--out", help="run directory for checkpoints and metrics (default: runs/<time>-<modalities>); "
                                 "one holding another run is refused unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out that holds another run: its checkpoints, metrics and "
                        "run_config.yaml are removed first")
    p.add_argument("--epochs", type=int, help="passes over the training split")
    p.add_argument("--fusion", help="fusion name, see `mmfuse list` (default: concat-mlp)")
    p.add_argument("--task", help="classification, multilabel, regression, contrastive or interactions (= model.task; "
                                  "default classification); the dataset must hold that kind of target "
                                  "(`mmfuse shard --task`)")
    p.add_argument("--text-encoder", help="text encoder, e.g. tiny-text, hf-text:bert-base-uncased, "
                                          "hf-text:/path/to/model")
    p.add_argument("--image-encoder", help="image encoder, e.g. tiny-image, timm-image:vit_small_patch16_224")
    p.add_argument("--audio-encoder", help="audio encoder, e.g. tiny-audio, timm-audio:vit_base_patch16_224, "
                                           "hf-audio:/path/to/ast-or-wav2vec2-or-whisper")
    p.add_argument("--preset", help="a model preset from mmfuse/model_configs (see `mmfuse list`) or a JSON file; "
                                    "--config, flags and --set override it")
    p.add_argument("--batch-size", type=int, help="training batch size")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (smoke tests)")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", help="auto, fp32, bf16 or fp16 (auto picks by hardware and the widest encoder)")
    p.add_argument("--workers", type=int, help="loader worker processes")
    p.add_argument("--strict", action="store_true", default=None,
                   help="fail on the first undecodable sample instead of skipping and counting it")
    p.add_argument("--lora", help="comma-separated towers fine-tuned with LoRA adapters (r=8) instead of fully, "
                                   "e.g. text; finer control: --set model.adapters.text.r=16")
    p.add_argument("--freeze", help="comma-separated towers whose encoders stay frozen, e.g. text,image")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run exactly where its last resumable checkpoint left it "
                        "(its run_config.yaml is used; other settings are ignored)")
    p.add_argument("--init-from", metavar="RUN_DIR",
                   help="start from a finished run's weights (same modalities, encoders, fusion); its labels are "
                        "kept, labels new in --data get new classifier rows")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.weight_decay=0.1 (repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_yaml, resolve, set_dotted
    from ..finetune import finetune

    if args.resume:
        from pathlib import Path

        run_config = Path(args.resume) / "run_config.yaml"
        if not run_config.is_file():
            raise ConfigError(f"--resume {args.resume} holds no run to resume ({run_config.name} is missing)")
        # the run in RUN_DIR itself, wherever it was moved or copied (not the `out` its run_config.yaml names)
        config = resolve(load_yaml(run_config), {"out": str(args.resume)},
                         {"train": {"progress": False}} if args.no_progress else {})
        finetune(config, resume=True)
        return 0
    preset_layer: dict[str, Any] = {}
    if args.preset is not None:
        from ..presets import load_preset

        preset_layer = {"model": load_preset(args.preset)}
    file_layer = load_yaml(args.config) if args.config else {}
    flags: dict[str, Any] = {"model": {}, "data": {}, "train": {}}
    if args.modalities is not None:
        flags["model"]["modalities"] = args.modalities
    if args.fusion is not None:
        flags["model"]["fusion"] = args.fusion
    if args.task is not None:
        flags["model"]["task"] = args.task
    encoders = {m: getattr(args, f"{m}_encoder") for m in ("text", "image", "audio")}
    flags["model"]["encoders"] = {m: {"name": n, "kwargs": {}} for m, n in encoders.items() if n}
    for key, value in (("path", args.data), ("batch_size", args.batch_size), ("num_workers", args.workers),
                       ("strict", args.strict)):
        if value is not None:
            flags["data"][key] = value
    for key, value in (("epochs", args.epochs), ("lr", args.lr), ("max_steps", args.max_steps),
                       ("seed", args.seed), ("device", args.device), ("precision", args.precision)):
        if value is not None:
            flags["train"][key] = value
    if args.no_progress:
        flags["train"]["progress"] = False
    if args.freeze:
        flags["train"]["freeze"] = args.freeze
    if args.init_from:
        flags["train"]["init_from"] = args.init_from
    if args.lora:
        flags["model"]["adapters"] = {t.strip(): {"method": "lora"} for t in args.lora.split(",") if t.strip()}
    if args.out is not None:
        flags["out"] = args.out
    overrides: dict[str, Any] = {}
    for assignment in args.set:
        set_dotted(overrides, assignment)
    try:
        config = resolve(preset_layer, file_layer, flags, overrides)
    except ConfigError as err:
        if preset_layer and str(err) == _alone(preset_layer):  # the preset's own mistake: name its file
            raise ConfigError(f"--preset {args.preset}: {err}") from None
        raise
    finetune(config, overwrite=args.overwrite)
    return 0


def _alone(layer: dict[str, Any]) -> str | None:
    """The error a config layer raises over the defaults alone, or None."""
    from ..config import resolve

    try:
        resolve(layer)
    except ConfigError as err:
        return str(err)
    return None
