"""PNG plots of a report (matplotlib, Agg backend): throughput per case, data-vs-compute split, MFU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLOURS = {"mmfuse": "#1f77b4", "baseline": "#aaaaaa"}


def _throughput(report: dict[str, Any], plt: Any, path: Path) -> None:
    cases = report["cases"]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(cases) + 1.5))
    for i, case in enumerate(cases):
        for j, name in enumerate(("mmfuse", "baseline")):
            s = case["series"].get(name)
            if s is None:
                continue
            y = i + (0.2 if j else -0.2) * bool(case["series"].get("baseline"))
            ax.barh(y, s["median"], height=0.38, color=COLOURS[name], label=name if i == 0 or not j else None,
                    xerr=[[s["median"] - s["q1"]], [s["q3"] - s["median"]]], capsize=2)
        if case["ratio"]:
            ax.text(case["series"]["mmfuse"]["median"], i, f"  {case['ratio']['median']:.2f}x", va="center",
                    fontsize=7)
    ax.set_yticks(range(len(cases)), [c["name"] for c in cases], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("samples/s (median, IQR bars; log scale); label = mmfuse / baseline")
    ax.set_title(f"throughput per case: {report['tag']}")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=False))
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _split(report: dict[str, Any], plt: Any, path: Path) -> None:
    cases = [c for c in report["cases"] if c["split"]]
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(1, len(cases)) + 1.5))
    for i, case in enumerate(cases):
        data, compute = case["split"]["data_fraction"], 1 - case["split"]["data_fraction"]
        ax.barh(i, data, color="#ff7f0e", label="data wait" if i == 0 else None)
        ax.barh(i, compute, left=data, color="#1f77b4", label="compute" if i == 0 else None)
        ax.text(1.0, i, f"  {data:.0%} data", va="center", fontsize=7)
    ax.set_yticks(range(len(cases)), [c["name"] for c in cases], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("fraction of a loader-fed Trainer.steps")
    ax.set_title("train: data wait vs compute")
    if cases:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mfu(report: dict[str, Any], plt: Any, path: Path) -> None:
    cases = [c for c in report["cases"] if c["mfu"]]
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(1, len(cases)) + 1.5))
    for i, case in enumerate(cases):
        for j, (name, value) in enumerate(sorted(case["mfu"].items(), reverse=True)):
            offset = (0.2 if j else -0.2) * (len(case["mfu"]) > 1)
            ax.barh(i + offset, value, height=0.38, color=COLOURS[name], label=name)
            ax.text(value, i + offset, f" {value:.0%}", va="center", fontsize=7)
    ax.axvline(0.5, color="k", lw=0.8, ls="--")
    ax.set_yticks(range(len(cases)), [c["name"] for c in cases], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.0)
    cal = report["calibration"]
    ax.set_xlabel(f"MFU: model FLOP/s / {cal['dtype']} matmul peak {cal['peak_flops'] / 1e9:.0f} GFLOP/s "
                  f"(dashed: 50% goal)")
    ax.set_title("model FLOPs utilisation")
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        unique = dict(zip(labels, handles, strict=False))
        ax.legend(unique.values(), unique.keys(), fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(report: dict[str, Any], out: Path) -> list[Path]:
    """Write throughput.png, split.png and mfu.png into `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, draw in (("throughput", _throughput), ("split", _split), ("mfu", _mfu)):
        path = out / f"{name}.png"
        draw(report, plt, path)
        paths.append(path)
    return paths
