"""`mmfuse bench --compare A.json B.json`: case-by-case ratios B / A of two reports."""

from __future__ import annotations

from typing import Any


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per case present in both reports: medians, B/A throughput ratio, MFU and in-run ratios of each."""
    cases_a = {c["name"]: c for c in a["cases"]}
    rows = []
    for case_b in b["cases"]:
        case_a = cases_a.get(case_b["name"])
        if case_a is None:
            continue
        med_a, med_b = case_a["series"]["mmfuse"]["median"], case_b["series"]["mmfuse"]["median"]
        rows.append({"name": case_b["name"], "a": med_a, "b": med_b, "b_over_a": med_b / med_a if med_a else None,
                     "ratio_a": (case_a["ratio"] or {}).get("median"), "ratio_b": (case_b["ratio"] or {}).get("median"),
                     "mfu_a": (case_a["mfu"] or {}).get("mmfuse"), "mfu_b": (case_b["mfu"] or {}).get("mmfuse")})
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_comparison(a: dict[str, Any], b: dict[str, Any], name_a: str = "A", name_b: str = "B") -> str:
    """A plain-text table of `compare(a, b)` with both calibrations and the cases found in only one report."""
    rows = compare(a, b)
    lines = [f"A = {name_a} ({a['tag']}, {a['created']}, peak {a['calibration']['peak_flops'] / 1e9:.1f} GFLOP/s)",
             f"B = {name_b} ({b['tag']}, {b['created']}, peak {b['calibration']['peak_flops'] / 1e9:.1f} GFLOP/s)",
             f"calibration B/A: {b['calibration']['peak_flops'] / a['calibration']['peak_flops']:.3f}", "",
             f"{'case':<42} {'A samples/s':>12} {'B samples/s':>12} {'B/A':>7} {'vs base A':>9} {'vs base B':>9} "
             f"{'MFU A':>6} {'MFU B':>6}"]
    for r in rows:
        lines.append(f"{r['name']:<42} {r['a']:>12.1f} {r['b']:>12.1f} {_fmt(r['b_over_a'], '.3f'):>7} "
                     f"{_fmt(r['ratio_a'], '.3f'):>9} {_fmt(r['ratio_b'], '.3f'):>9} "
                     f"{_fmt(r['mfu_a'], '.1%'):>6} {_fmt(r['mfu_b'], '.1%'):>6}")
    only = sorted({c["name"] for c in a["cases"]} ^ {c["name"] for c in b["cases"]})
    if only:
        lines += ["", "in one report only: " + ", ".join(only)]
    return "\n".join(lines)
