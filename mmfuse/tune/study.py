"""`tune(base, out, trials)`: an Optuna study whose trials are `finetune` runs of the base config with sampled values.

    OUT/study.db            the study (SQLite unless `storage` names another): re-running continues it
    OUT/trials/NNNN/        each trial's run directory (run_config.yaml, metrics, checkpoints)
    OUT/logs/NNNN.log       each trial's fine-tuning log
    OUT/features/           cached frozen-tower features shared by the trials (when towers are frozen)
    OUT/trials.csv, .md     one row per trial; OUT/tune.png; OUT/best.yaml (see `mmfuse.tune.report`)

Trial 0 is the base config itself, so the summary always compares the best trial with it. Each epoch's validation
metric is reported to the pruner (`finetune(on_epoch=...)`), which may stop a trial early. A trial whose values
make an invalid config (`ConfigError`) or whose training diverges (`TrainingError`) is recorded as failed with its
one-line reason and the study goes on; any other error (the data, an output, Ctrl-C) stops the study, and a study
stopped or killed mid-trial re-runs that trial's values when continued. One process works on a study directory at
a time (OUT is locked).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import RunConfig, resolve
from ..errors import ConfigError, TrainingError
from ..outputs import hold
from .report import write_reports
from .space import Param, default_space, dotted, nested, recipe

PRUNERS = ("median", "hyperband", "none")
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


class StudyInterrupted(Exception):
    """A trial's fine-tuning was stopped by SIGTERM; the study ends and continues when re-run."""


def check_space(base: dict[str, Any], params: list[Param]) -> None:
    """Resolve the base config with each end of each parameter's range (each choice), so a value the config
    refuses is reported before any trial runs, naming the key."""
    from ..fusion.base import FUSIONS
    from ..tasks import check_model_config

    if not params:
        raise ConfigError("the search space is empty: give a --space file with at least one parameter")
    for p in params:
        for value in p.choices or (p.low, p.high):
            value = int(value) if p.type == "int" else value
            try:
                model = resolve(base, nested({p.key: value})).model
                FUSIONS.get(model.fusion)  # a name no fusion is registered under
                check_model_config(model)
            except ConfigError as err:
                raise ConfigError(f"search space {p.key}={value!r}: {err}") from None


def make_pruner(pruner: Any, params: list[Param], base: RunConfig) -> Any:
    """An Optuna pruner from its name (median, hyperband, none) or the pruner object itself."""
    import optuna

    if not isinstance(pruner, str):
        return pruner
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if pruner == "hyperband":  # the resource is the epoch (an lp-ft run's probe epochs come first)
        epochs = max([base.train.epochs, *(int(p.high) for p in params if p.key == "train.epochs")])
        if recipe(base) == "lp-ft":
            epochs += max([base.train.probe_epochs, *(int(p.high) for p in params if p.key == "train.probe_epochs")])
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 2), reduction_factor=3)
    if pruner == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}, got '{pruner}'")


def tune(base: dict[str, Any] | RunConfig, out: str | Path, trials: int = 20, *, timeout: float | None = None,
         space: list[Param] | None = None, study_name: str = "mmfuse-tune", storage: str | None = None,
         seed: int = 0, pruner: Any = "median", resume: bool = False,
         echo: Callable[..., Any] = print) -> dict[str, Any]:
    """Search hyperparameters of `base` (a run config or its layer dict) with `trials` fine-tuning runs in all.

    `trials` counts the whole study: a continued study (same `out` and `study_name`) runs only the rest. Returns
    the summary: counts per state, the best trial and the base trial (number, value, params), the metric and
    direction, parameter importances, the paths written.
    """
    optuna = import_optuna()
    base, base_config, params = _settings(base, trials, timeout, space)
    task = _task(base_config)
    metric, higher = task.best_metric, task.higher_is_better
    out = Path(out)
    lock = hold(out, "tune")
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial's line is ours; a failure is one line
    try:
        storage = storage or f"sqlite:///{out.resolve() / 'study.db'}"
        study = _open_study(optuna, study_name, storage, resume, "maximize" if higher else "minimize",
                            {"sampler": optuna.samplers.TPESampler(seed=seed),
                             "pruner": make_pruner(pruner, params, base_config)},
                            {"base": base, "space": [{"key": p.key, **p.to_dict()} for p in params]})
        remaining = trials - _prepare(study, base, params)
        if remaining <= 0:
            echo(f"mmfuse: study '{study_name}' already has {trials} finished trials; raise --trials to run more")
        # towers a trial freezes (train.freeze, the frozen recipe, lp-ft's probe) are encoded once per study
        cache = {} if base_config.train.cache_dir else {"cache_dir": str(out / "features")}
        echo(f"mmfuse: tuning {', '.join(p.key for p in params)} for val {metric} "
             f"({'higher' if higher else 'lower'} is better): {max(remaining, 0)} trials -> {out}")
        started = time.perf_counter()
        interrupted = _optimize(study, Objective(base, params, out, metric, higher, cache), remaining, timeout,
                                lambda study, trial: _after_trial(study, trial, out, base, params, metric, higher,
                                                                  echo))
        summary = write_reports(study, out, base, params, metric, higher, plot=True)
        summary.update(wall_s=time.perf_counter() - started, interrupted=interrupted, study=study_name,
                       storage=storage)
        echo(describe_study(summary, out))
        return summary
    finally:
        optuna.logging.set_verbosity(verbosity)
        lock.release()


def _settings(base: dict[str, Any] | RunConfig, trials: int, timeout: float | None,
              space: list[Param] | None) -> tuple[dict[str, Any], RunConfig, list[Param]]:
    """The base layer (without `out`), its resolved config and the checked search space; `ConfigError` first."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("mmfuse tune runs its trials in one process: start it without torchrun")
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"--timeout must be > 0 seconds, got {timeout}")
    base = base.to_dict() if isinstance(base, RunConfig) else dict(base)
    base.pop("out", None)
    base_config = resolve(base)
    params = default_space(base_config) if space is None else list(space)
    check_space(base, params)
    return base, base_config, params


def _task(config: RunConfig) -> Any:
    from ..tasks import task_class

    return task_class(config.model.task)


def _optimize(study: Any, objective: Objective, remaining: int, timeout: float | None,
              after_trial: Callable[[Any, Any], None]) -> bool:
    """Run up to `remaining` trials; True when a trial was stopped by SIGTERM (the study ends there)."""
    if remaining <= 0:
        return False
    try:
        study.optimize(objective, n_trials=remaining, timeout=timeout, callbacks=[after_trial])
    except StudyInterrupted:
        return True
    return False


def _after_trial(study: Any, trial: Any, out: Path, base: dict[str, Any], params: list[Param], metric: str,
                 higher: bool, echo: Callable[..., Any]) -> None:
    """Each finished trial: its line, and the tables and best.yaml brought up to date (the plot waits)."""
    echo(describe_trial(trial, metric))
    write_reports(study, out, base, params, metric, higher, plot=False)


def import_optuna() -> Any:
    """The optuna module, or a `ConfigError` saying how to install it (the `tune` extra)."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("mmfuse tune needs optuna: pip install 'mmfuse[tune]'") from None
    return optuna


def _open_study(optuna: Any, name: str, storage: str, resume: bool, direction: str, sampler_pruner: dict[str, Any],
                identity: dict[str, Any]) -> Any:
    """Create the study or load the one of that name; refuse one that tunes another base config or space."""
    try:
        exists = name in optuna.study.get_all_study_names(storage)
    except Exception as err:  # sqlalchemy's errors for a URL it cannot open, of many types
        raise ConfigError(f"--storage {storage} cannot be opened: {str(err).splitlines()[0]}") from None
    if resume and not exists:
        raise ConfigError(f"--resume: {storage} holds no study '{name}' to continue")
    study = optuna.create_study(study_name=name, storage=storage, direction=direction, load_if_exists=True,
                                **sampler_pruner)
    if study.direction.name.lower() != direction:
        raise ConfigError(f"study '{name}' in {storage} was made to {study.direction.name.lower()}; this config's "
                          f"task needs {direction}: choose another --study or --out")
    saved = study.user_attrs.get("mmfuse")
    if saved is None:
        study.set_user_attr("mmfuse", identity)
    elif json.dumps(saved, sort_keys=True) != json.dumps(identity, sort_keys=True, default=str):
        what = "base config" if saved.get("base") != json.loads(json.dumps(identity["base"], default=str)) \
            else "search space"
        raise ConfigError(f"study '{name}' in {storage} tunes another {what}: continue it with the same --config, "
                          f"--data, --set and --space, or choose another --study or --out")
    return study


def _prepare(study: Any, base: dict[str, Any], params: list[Param]) -> int:
    """Enqueue the base config as trial 0 of a new study, and the parameters of trials a killed run left
    unfinished; return the number of finished trials that count toward the total."""
    from optuna.trial import TrialState

    storage = study._storage
    requeued = list(study.user_attrs.get("requeued", []))  # finished trials take no attributes: the study keeps them
    done = 0
    for trial in study.get_trials(deepcopy=False):
        broken = trial.state == TrialState.RUNNING or trial.user_attrs.get("interrupted")
        if broken and trial.number not in requeued:
            if trial.state == TrialState.RUNNING:  # the process running it died (one process holds OUT)
                storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            requeued.append(trial.number)
            study.set_user_attr("requeued", requeued)
            study.enqueue_trial(trial.params, user_attrs={k: v for k, v in trial.user_attrs.items() if k == "base"})
        elif not broken and trial.state.name in FINISHED:
            done += 1
    if not study.get_trials(deepcopy=False):
        resolved = resolve(base).to_dict()
        values = {p.key: dotted(resolved, p.key) for p in params}
        study.enqueue_trial({k: v for k, v in values.items() if _param(params, k).contains(v)},
                            user_attrs={"base": True})
    return done


def _param(params: list[Param], key: str) -> Param:
    return next(p for p in params if p.key == key)


class Objective:
    """One trial: the base config with the trial's values -> `finetune` into OUT/trials/NNNN -> best val metric."""

    def __init__(self, base: dict[str, Any], params: list[Param], out: Path, metric: str, higher: bool,
                 cache: dict[str, Any]) -> None:
        self.base, self.params, self.out, self.metric, self.higher = base, params, out, metric, higher
        self.cache = cache
        self.resolved = resolve(base).to_dict()

    def values(self, trial: Any) -> dict[str, Any]:
        """The trial's value of each key (the base trial keeps the base values its space does not contain)."""
        values = {}
        for p in self.params:
            value = dotted(self.resolved, p.key)
            if trial.user_attrs.get("base") and not p.contains(value):
                values[p.key] = value
                continue
            values[p.key] = p.suggest(trial)
        return values

    def reporter(self, trial: Any) -> Callable[[dict[str, Any]], None]:
        """`finetune`'s `on_epoch`: report the epoch's val metric, keep the trial's best, stop a pruned trial."""
        import optuna

        def on_epoch(record: dict[str, Any]) -> None:
            value = record.get(f"val_{self.metric}")
            if isinstance(value, (int, float)) and math.isfinite(value):
                trial.report(float(value), record["epoch"])
                best = trial.user_attrs.get("value")
                if best is None or (value > best if self.higher else value < best):
                    trial.set_user_attr("value", float(value))
                    trial.set_user_attr("best_epoch", record["epoch"])
            if not trial.user_attrs.get("base") and trial.should_prune():  # the base runs to its end: the yardstick
                raise optuna.TrialPruned(f"pruned after epoch {record['epoch']}")

        return on_epoch

    def __call__(self, trial: Any) -> float:
        tick = time.perf_counter()
        log = self.out / "logs" / f"{trial.number:04d}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        try:
            with log.open("a", encoding="utf-8") as file:
                result = self.train(trial, lambda *args: print(*args, file=file, flush=True))
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - tick, 2))
        if result is None:
            return float("nan")  # Optuna records the trial as failed
        if result.get("interrupted"):
            trial.set_user_attr("interrupted", True)
            raise StudyInterrupted(f"trial {trial.number} was stopped by SIGTERM")
        value = float(result["val"][self.metric])
        trial.set_user_attr("value", value)
        trial.set_user_attr("best_epoch", result["best_epoch"])
        return value

    def train(self, trial: Any, echo: Callable[..., Any]) -> dict[str, Any] | None:
        """The trial's `finetune` run: its metrics.json summary, or None when its config or training failed (the
        one-line reason in the trial's `error`)."""
        import optuna

        from ..finetune import finetune

        run_dir = self.out / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("dir", str(run_dir))
        try:
            config = resolve(self.base, nested(self.values(trial)),
                             {"out": str(run_dir), "train": {"progress": False, **self.cache}})
            return finetune(config, echo=echo, on_epoch=self.reporter(trial))
        except (ConfigError, TrainingError) as err:  # this trial's values: the study goes on
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            trial.set_user_attr("error", f"{type(err).__name__}: {message}")
            echo(f"mmfuse: error: {message}")
            return None
        except optuna.TrialPruned:
            raise
        except BaseException:  # Ctrl-C, a data or output error, a bug: the study stops; a re-run retries it
            trial.set_user_attr("interrupted", True)
            raise


def describe_trial(trial: Any, metric: str) -> str:
    """One line per finished trial: number, state, value, parameters (or the failure's reason)."""
    state = trial.state.name.lower()
    value = trial.user_attrs.get("value")
    shown = f"val {metric} {value:.4f}" if isinstance(value, float) else "no val metric"
    params = "  ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in trial.params.items())
    base = " (base config)" if trial.user_attrs.get("base") else ""
    reason = f": {trial.user_attrs['error']}" if trial.user_attrs.get("error") else ""
    return f"trial {trial.number}{base} {state}{reason}: {shown}  {params}".rstrip()


def describe_study(summary: dict[str, Any], out: Path) -> str:
    """The closing summary: counts, wall time, best trial against the base config."""
    counts = summary["counts"]
    again = "; interrupted: re-run the same command to continue" if summary["interrupted"] else ""
    lines = [f"mmfuse: study '{summary['study']}': {summary['total']} trials ({counts.get('complete', 0)} complete, "
             f"{counts.get('pruned', 0)} pruned, {counts.get('fail', 0)} failed, {counts.get('interrupted', 0)} "
             f"interrupted) after {summary['wall_s']:.0f}s this run{again}"]
    best, default, metric = summary["best"], summary["base"], summary["metric"]
    if best is None:
        lines.append("no trial completed: no best config")
    elif default and default["number"] == best["number"]:
        lines.append(f"best: the base config (trial {best['number']}) val {metric} {best['value']:.4f}; no trial "
                     f"beat it -> {out / 'best.yaml'}")
    else:
        versus = f" vs {default['value']:.4f} for the base config (trial {default['number']})" \
            if default and isinstance(default.get("value"), float) else " (the base config has no value)"
        lines.append(f"best: trial {best['number']} val {metric} {best['value']:.4f}{versus} -> {out / 'best.yaml'}")
    return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
