"""`mmfuse tune`: a base run config (+ --data, --set) and a search space -> `mmfuse.tune.tune`."""

from __future__ import annotations

import argparse
from typing import Any

from .common import HelpFormatter


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune", help="search hyperparameters of a run config with Optuna (trials are fine-tuning runs)",
        description="Run --trials fine-tuning runs of the base config with values drawn from the search space "
                    "(Optuna TPE), pruning trials whose val metric lags; trial 0 is the base config itself. Writes "
                    "OUT/trials.csv, trials.md, tune.png and best.yaml (run it with `mmfuse finetune --config "
                    "OUT/best.yaml`). The study lives in OUT/study.db: re-running the command continues it.",
        formatter_class=HelpFormatter)
    p.add_argument("--config", help="base run config YAML (default: the defaults, i.e. the demo run)")
    p.add_argument("--data", help="shard directory with a dataset.json (default: the base config's data.path, "
                                  "else the embedded demo dataset)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the base config, e.g. --set train.max_steps=50 (repeatable)")
    p.add_argument("--trials", type=int, default=20, help="trials in the whole study, the base config's included "
                                                          "(a continued study runs only the rest)")
    p.add_argument("--timeout", type=float, metavar="S", help="stop starting trials after S seconds")
    p.add_argument("--out", help="study directory: study.db, trials/NNNN run directories, reports (required)")
    p.add_argument("--study", default="mmfuse-tune", metavar="NAME", help="study name inside the storage")
    p.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: sqlite:///OUT/study.db)")
    p.add_argument("--space", metavar="SPACE.yaml",
                   help="search space: dotted config keys -> {type: float|int|categorical, low, high, log, step, "
                        "choices} (default: fusion, dim, dropout, lr, encoder_lr, weight_decay, epochs around the "
                        "base values; see docs/tune.md)")
    p.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"],
                   help="stop trials whose per-epoch val metric lags the others")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler (each trial trains with train.seed)")
    p.add_argument("--resume", action="store_true",
                   help="continue the study in --out (an error if there is none); re-running does the same")
    p.add_argument("--print-space", action="store_true",
                   help="print the search space as a --space YAML file and exit")
    p.set_defaults(func=run)


def base_layer(args: argparse.Namespace) -> dict[str, Any]:
    """The base config as one layer: --config, then --data, then --set."""
    from ..config import load_yaml, merge, set_dotted

    layer = load_yaml(args.config) if args.config else {}
    if args.data:
        layer = merge(layer, {"data": {"path": args.data}})
    overrides: dict[str, Any] = {}
    for assignment in args.set:
        set_dotted(overrides, assignment)
    return merge(layer, overrides)


def run(args: argparse.Namespace) -> int:
    from ..config import resolve
    from ..errors import ConfigError
    from ..tune import default_space, load_space, tune
    from ..tune.space import dump_space
    from .common import say

    base = base_layer(args)
    space = load_space(args.space) if args.space else None
    if args.print_space:
        print(dump_space(space if space is not None else default_space(resolve(base))), end="")
        return 0
    if not args.out:
        raise ConfigError("mmfuse tune needs --out DIR, the study directory")
    summary = tune(base, args.out, args.trials, timeout=args.timeout, space=space, study_name=args.study,
                   storage=args.storage, seed=args.seed, pruner=args.pruner, resume=args.resume, echo=say)
    return 130 if summary["interrupted"] else 0
