"""Writing a report: `report.json` (schema in `schema.py`), `report.md` and PNG plots in one directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..outputs import write_atomic
from .plots import write_plots
from .schema import validate


def _gflops(flops: float | None) -> str:
    return "" if not flops else f"{flops / 1e9:.3g}"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def _series(s: dict[str, Any] | None) -> str:
    if s is None:
        return ""
    return f"{s['median']:.1f} [{s['q1']:.1f}, {s['q3']:.1f}]"


def _case_rows(report: dict[str, Any]) -> list[str]:
    rows = ["| case | batch | mmfuse samples/s [IQR] | baseline samples/s [IQR] | ratio [IQR] | GFLOP/sample "
            "| CPU-time ratio [IQR] | MFU mmfuse | MFU baseline | peak memory |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for c in report["cases"]:
        r = c["ratio"]
        ratio = f"**{r['median']:.3f}** [{r['q1']:.3f}, {r['q3']:.3f}]" if r else ""
        cr = c["cpu_ratio"]
        cpu_ratio = f"{cr['median']:.3f} [{cr['q1']:.3f}, {cr['q3']:.3f}]" if cr else ""
        mfu = c["mfu"] or {}
        rows.append(f"| `{c['name']}` | {c['batch_size']} | {_series(c['series']['mmfuse'])} | "
                    f"{_series(c['series'].get('baseline'))} | {ratio} | {_gflops(c['flops_per_sample'])} | "
                    f"{cpu_ratio} | "
                    f"{_pct(mfu.get('mmfuse'))} | {_pct(mfu.get('baseline'))} | "
                    f"{c['memory']['bytes'] / 2**20:.0f} MiB |")
    return rows


def _ratio(r: dict[str, Any] | None) -> str:
    return f"{r['median']:.3f} [{r['q1']:.3f}, {r['q3']:.3f}]" if r else ""


def _cosine(p: dict[str, Any] | None) -> str:
    return f"{p['min']:.5f} / {p['mean']:.5f}" if p else ""


def _backend_rows(report: dict[str, Any]) -> list[str]:
    """One row per series of the cases that compare serving backends (text-embed, embed-backends)."""
    cases = [c for c in report["cases"] if c.get("parity")]
    if not cases:
        return []
    rows = ["## Serving backends (fp32 = mmfuse in PyTorch; ST = sentence-transformers' encode, its defaults)", "",
            "| case | weights | series | samples/s [IQR] | / fp32 | / ST | cosine to fp32 (min / mean) "
            "| cosine to ST (min / mean) |", "|---|---|---|---|---|---|---|---|"]
    for c in cases:
        ratios, parity = c.get("ratios") or {}, c["parity"]
        for name, series in c["series"].items():
            label = {"mmfuse": "fp32", "baseline": "ST"}.get(name, name)
            to_fp32 = ratios.get(f"{name}/mmfuse") if name not in ("mmfuse", "baseline") else None
            to_st = c["ratio"] if name == "mmfuse" else ratios.get(f"{name}/baseline")
            cos_fp32 = parity.get(f"{name}_vs_mmfuse") or (parity.get("mmfuse_vs_baseline")
                                                           if name == "baseline" else None)
            cos_st = parity.get(f"{name}_vs_baseline") or (parity.get("mmfuse_vs_baseline")
                                                           if name == "mmfuse" else None)
            rows.append(f"| `{c['name']}` | {c.get('weights', '')} | {label} | {_series(series)} | {_ratio(to_fp32)} "
                        f"| {_ratio(to_st)} | {_cosine(cos_fp32)} | {_cosine(cos_st)} |")
        skipped = (c.get("backends") or {}).get("skipped")
        if skipped:
            rows.append(f"| `{c['name']}` | | skipped: {skipped} | | | | | |")
    return rows + [""]


def _precision_rows(report: dict[str, Any]) -> list[str]:
    """The precision lever's cases: the speed ratio beside what the same short run learned in either precision."""
    cases = [c for c in report["cases"] if c.get("quality")]
    if not cases:
        return []
    rows = ["## Precision: bf16 autocast vs fp32 (speed of one train step; a short run of both from the same start)",
            "", "| case | bf16 / fp32 speed [IQR] | steps | train loss first -> last (bf16 / fp32) "
            "| val loss (bf16 / fp32) | val accuracy (bf16 / fp32) | accuracy delta |", "|---|---|---|---|---|---|---|"]
    for c in cases:
        q, on, off = c["quality"], c["quality"]["mmfuse"], c["quality"]["baseline"]
        rows.append(f"| `{c['name']}` | {_ratio(c['ratio'])} | {q['steps']} | "
                    f"{on['train_loss_first']:.3f} -> {on['train_loss_last']:.3f} / "
                    f"{off['train_loss_first']:.3f} -> {off['train_loss_last']:.3f} | "
                    f"{on['val_loss']:.3f} / {off['val_loss']:.3f} | {on['val_accuracy']:.3f} / "
                    f"{off['val_accuracy']:.3f} | {q['val_accuracy_delta']:+.3f} |")
    return rows + [""]


def markdown(report: dict[str, Any]) -> str:
    """A human summary of `report`: settings, calibration, flags, one table per view, the environment."""
    env, cal, st = report["environment"], report["calibration"], report["settings"]
    cpu = env["cpu"]
    isa = ", ".join(f for f, on in cpu["isa"].items() if on) or "none of the listed"
    gpu = env["gpu"]
    lines = [f"# mmfuse bench: `{report['tag']}`", "",
             f"{report['created']} · `{' '.join(report['command'])}` · {report['duration_s']:.0f} s · "
             f"mmfuse {env['versions'].get('mmfuse')} (git {env.get('git_commit')})", "",
             f"- device **{st['device']}**, precision **{st['precision']}**, compile {st['compile']}, loader workers "
             f"{st['workers']}, {st['repeats']} repeats (median [q1, q3]), {st['warmup']} warm-up, >= "
             f"{st['min_time']} s per repeat; baseline and mmfuse interleaved (ABBA)",
             f"- calibration ({cal['dtype']} matmul {cal['size']}^2): before **{cal['before_flops'] / 1e9:.1f}**, "
             f"after **{cal['after_flops'] / 1e9:.1f}** GFLOP/s, drift {cal['drift']:.1%}; MFU is against the "
             f"higher of the two", ""]
    if report["flags"]:
        lines += ["## Flags", ""] + [f"- {f}" for f in report["flags"]] + [""]
    lines += ["## Cases", "", "Ratio = mmfuse / baseline, the median of per-repeat ratios (each repeat pairs "
              "neighbouring runs); the CPU-time ratio is the same from process CPU seconds, much less disturbed by "
              "other processes on a shared machine. Baselines: loader = raw decode loop over the same tar members; "
              "train = "
              "hand-written loop (fused AdamW) on an identical model copy and the same batch; embed = "
              "`FusionModel.embed` on already collated batches.", ""] + _case_rows(report) + [""]
    lines += _backend_rows(report)
    lines += _precision_rows(report)
    split_rows = [c for c in report["cases"] if c["split"]]
    if split_rows:
        lines += ["## Train: data wait vs compute (loader-fed `Trainer.steps`)", "",
                  "| case | steps | samples/s | data wait s | compute s | data fraction |", "|---|---|---|---|---|---|"]
        lines += [f"| `{c['name']}` | {c['split']['steps']} | {c['split']['samples_per_s']:.1f} | "
                  f"{c['split']['data_s']:.2f} | {c['split']['compute_s']:.2f} | {c['split']['data_fraction']:.1%} |"
                  for c in split_rows] + [""]
    lines += ["## Plots", "", "![throughput](throughput.png)", "", "![data vs compute](split.png)", "",
              "![MFU](mfu.png)", "", "## Environment", "",
              f"- CPU: {cpu['model']}, {cpu['logical_cpus']} logical / {cpu['usable_cpus']} usable CPUs, "
              f"{cpu.get('physical_cores')} physical cores; ISA: {isa}",
              f"- GPU: {gpu['name'] + ' x' + str(gpu['count']) + ', driver ' + str(gpu['driver']) if gpu else 'none'}",
              f"- threads: {', '.join(f'{k}={v}' for k, v in env['threads'].items() if v is not None)}",
              f"- load average (1/5/15 min) before {env.get('load_average_before')}, after "
              f"{env.get('load_average_after')}",
              f"- {env.get('os')}, Python {env['python']}, " +
              ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v) +
              f", CUDA {env['torch'].get('cuda')}, CPU capability {env['torch'].get('cpu_capability')}", ""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: str | Path) -> Path:
    """Validate `report`, then write report.json, report.md and the plots into `out_dir`. Returns the JSON path."""
    validate(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.json"
    write_atomic(path, json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    try:
        write_plots(report, out)
    except ImportError as err:  # a GPU machine without matplotlib still gets its JSON and Markdown
        text = text.replace("## Plots", f"## Plots\n\nNot drawn: {err.name} is not installed here.", 1)
    write_atomic(out / "report.md", text)
    return path


def load_report(path: str | Path) -> dict[str, Any]:
    """Read and validate a report.json."""
    from ..errors import ConfigError

    try:
        report = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read bench report {path}: {err}") from None
    validate(report)
    return report
