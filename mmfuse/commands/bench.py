"""`mmfuse bench`: run the throughput suite and write its report, or compare two reports."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import HelpFormatter, say


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="throughput suite: loader, encode, train, embed vs same-run baselines, MFU, reports",
        description="Time the loader, encoders, the trainer's step and the embedding path against baselines run "
                    "interleaved in the same process; write report.json, report.md and plots to "
                    "benchmarks/results/<environment-tag>/ (or --out).",
        formatter_class=HelpFormatter)
    p.add_argument("--cases", default="loader,encode,train,embed",
                   help="comma-separated case kinds: loader, encode, train, embed, lever (speed levers on vs off), "
                        "text-embed (mmfuse fp32, int8 and onnx vs sentence-transformers on all-MiniLM-L6-v2), "
                        "embed-backends (Embedder.embed fp32 vs int8 vs onnx on the demo model)")
    p.add_argument("--only", help="comma-separated name parts: run only the cases whose name contains one, "
                                  "e.g. --cases lever --only precision")
    p.add_argument("--preset", default="default",
                   help="default (demo, BERT-small, ViT-S towers), tiny (smoke) or gpu (BERT-base, ViT-B/16 and the "
                        "demo model at GPU batch sizes; with --device cuda)")
    p.add_argument("--modalities", help="replace the demo model's train/embed modality set, e.g. text,image")
    p.add_argument("--fusion", help="replace the demo model's train/embed fusion, e.g. gated")
    p.add_argument("--batch-size", type=int, help="override every case's batch size")
    p.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--compile", action="store_true", help="torch.compile the models (trainer and baselines)")
    p.add_argument("--workers", type=int, default=0, help="loader worker processes")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per case")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up calls per workload")
    p.add_argument("--min-time", type=float, default=1.0, help="minimum seconds per repeat")
    p.add_argument("--data", help="shard directory with a dataset.json (default: the embedded demo data)")
    p.add_argument("--out", help="report directory (default: benchmarks/results/<environment-tag>)")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="print per-case ratios B/A and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import BenchConfig, format_comparison, load_report, run_suite, write_report

    if args.compare:
        a, b = (load_report(path) for path in args.compare)
        print(format_comparison(a, b, *args.compare))
        return 0
    split = [c.strip() for c in args.cases.split(",") if c.strip()]
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()] if args.modalities else None
    cfg = BenchConfig(cases=split, preset=args.preset, device=args.device, precision=args.precision,
                      batch_size=args.batch_size, modalities=modalities, fusion=args.fusion, compile=args.compile,
                      workers=args.workers, repeats=args.repeats, warmup=args.warmup, min_time=args.min_time,
                      data=args.data, only=[o.strip() for o in args.only.split(",") if o.strip()] if args.only
                      else None)
    report = run_suite(cfg, echo=say, argv=["mmfuse", *sys.argv[2:]] if sys.argv[1:2] == ["bench"] else None)
    out = Path(args.out) if args.out else Path("benchmarks") / "results" / report["tag"]
    path = write_report(report, out)
    for flag in report["flags"]:
        print(f"  flag: {flag}")
    print(f"mmfuse bench: report {path}, {out / 'report.md'}")
    return 0
