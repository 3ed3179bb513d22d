"""What `mmfuse tune` writes about its study: trials.csv and trials.md (one row per trial), tune.png (the metric per
trial with its running best, and parameter importances where Optuna can compute them) and best.yaml (the base
config with the best trial's values, runnable as `mmfuse finetune --config OUT/best.yaml`)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import yaml

from ..config import merge
from ..outputs import write_atomic
from .space import Param, nested

COLUMNS = ("number", "state", "value", "best_epoch", "seconds")
IMPORTANCE_TRIALS = 5
"""Complete trials needed before tune.png shows parameter importances."""


def trial_rows(study: Any, params: list[Param]) -> list[dict[str, Any]]:
    """One dict per trial: number, state, best val value, best epoch, seconds, each parameter, error."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        state = trial.state.name.lower()
        if attrs.get("interrupted"):
            state = "interrupted"
        row = {"number": trial.number, "state": state, "value": attrs.get("value"),
               "best_epoch": attrs.get("best_epoch"), "seconds": attrs.get("seconds")}
        row.update({p.key: trial.params.get(p.key) for p in params})
        row["base"] = bool(attrs.get("base"))
        row["error"] = attrs.get("error", "")
        rows.append(row)
    return rows


def write_reports(study: Any, out: Path, base: dict[str, Any], params: list[Param], metric: str, higher: bool,
                  plot: bool = True) -> dict[str, Any]:
    """Write trials.csv, trials.md, best.yaml (and tune.png when `plot`); return the study's summary."""
    rows = trial_rows(study, params)
    keys = [p.key for p in params]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*COLUMNS, *keys, "base", "error"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out / "trials.csv", buffer.getvalue())
    write_atomic(out / "trials.md", markdown(rows, keys, metric))
    finished = [r for r in rows if r["state"] == "complete" and isinstance(r["value"], float)]
    best = (max if higher else min)(finished, key=lambda r: r["value"]) if finished else None
    default = next((r for r in rows if r["base"] and r["state"] == "complete"), None)
    if best is not None:
        write_best_yaml(out / "best.yaml", base, {k: best[k] for k in keys if best[k] is not None}, best, metric)
    importances = param_importances(study) if plot else {}
    if plot:
        plot_study(rows, importances, out / "tune.png", metric, higher)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1

    def pick(r: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if r is None else {"number": r["number"], "value": r["value"], "params": {k: r[k] for k in keys}}

    return {"metric": metric, "higher_is_better": higher, "total": len(rows), "counts": counts, "best": pick(best),
            "base": pick(default), "trials": rows, "importances": importances,
            "files": {name: str(out / name) for name in ("trials.csv", "trials.md", "best.yaml", "tune.png")
                      if (out / name).exists()}}


def markdown(rows: list[dict[str, Any]], keys: list[str], metric: str) -> str:
    """The trials as a Markdown table (the failure reason in the last column)."""
    head = ["trial", "state", f"val {metric}", "best epoch", "seconds", *(k.split(".")[-1] for k in keys), "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        note = "base config" if r["base"] else ""
        note = "; ".join(x for x in (note, r["error"].replace("|", "/")) if x)
        cells = [r["number"], r["state"], _cell(r["value"]), _cell(r["best_epoch"]), _cell(r["seconds"]),
                 *(_cell(r[k]) for k in keys), note]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def write_best_yaml(path: Path, base: dict[str, Any], values: dict[str, Any], best: dict[str, Any],
                    metric: str) -> None:
    """The base config layer with the best trial's values merged (no `out`: the run picks its own)."""
    config = merge(base, nested(values))
    config.pop("out", None)
    header = (f"# mmfuse tune: the base config with trial {best['number']}'s values (val {metric} "
              f"{best['value']:.4f}).\n# Run it: mmfuse finetune --config {path.name} --out RUN_DIR\n")
    write_atomic(path, header + yaml.safe_dump(config, sort_keys=False))


def plot_study(rows: list[dict[str, Any]], importances: dict[str, float], path: Path, metric: str,
               higher: bool) -> None:
    """tune.png: val metric per trial (complete and pruned) with the running best; importances beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2 if importances else 1, figsize=(11 if importances else 6.5, 4), squeeze=False)
    ax = axes[0][0]
    for state, style in (("complete", {"color": "C0", "marker": "o"}), ("pruned", {"color": "0.6", "marker": "x"})):
        points = [(r["number"], r["value"]) for r in rows if r["state"] == state and isinstance(r["value"], float)]
        if points:
            ax.scatter(*zip(*points, strict=True), label=state, **style)
    running, best = [], None
    for r in rows:
        if r["state"] == "complete" and isinstance(r["value"], float):
            best = r["value"] if best is None else (max if higher else min)(best, r["value"])
        if best is not None:
            running.append((r["number"], best))
    if running:
        ax.step(*zip(*running, strict=True), where="post", color="C1", label="running best")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"val {metric}")
    ax.set_title(f"val {metric} per trial ({'higher' if higher else 'lower'} is better)")
    ax.legend(loc="best")
    if importances:
        names = list(importances)[::-1]
        axes[0][1].barh(names, [importances[n] for n in names], color="C2")
        axes[0][1].set_title("parameter importance (fANOVA)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def param_importances(study: Any) -> dict[str, float]:
    """fANOVA importances of the searched keys over the complete trials; {} below `IMPORTANCE_TRIALS` of them (too
    few to say anything, and not worth the import of scikit-learn it costs) or when Optuna cannot compute them."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.params]
    if len(complete) < IMPORTANCE_TRIALS:
        return {}
    import optuna

    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=16, seed=0)
        found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ImportError, RuntimeError, ValueError, ZeroDivisionError):
        return {}
    return {k: float(v) for k, v in found.items() if math.isfinite(v)}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
