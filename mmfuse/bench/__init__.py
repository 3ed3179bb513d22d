"""`mmfuse bench`: a throughput suite (loader, encode, train, embed) with same-run baselines, MFU against a
same-session matmul peak, the data-wait vs compute split and the environment, written as JSON + Markdown + PNG.

    report = run_suite(BenchConfig(cases=["train"]))
    write_report(report, "benchmarks/results/" + report["tag"])
"""

from .compare import compare, format_comparison
from .presets import BenchConfig
from .report import load_report, write_report
from .schema import validate
from .suite import SCHEMA_VERSION, run_suite

__all__ = ["SCHEMA_VERSION", "BenchConfig", "compare", "format_comparison", "load_report", "run_suite", "validate",
           "write_report"]
