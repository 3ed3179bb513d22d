"""Fusion ablation on the demo data: every registered fusion x {text+image, text+image+audio}, and each modality
alone, with the default demo run (tiny towers, 10 epochs, seed 0). Writes benchmarks/results/fusion-ablation.{json,md}.

    python benchmarks/fusion_ablation.py [--epochs 10] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from mmfuse.config import resolve
from mmfuse.finetune import finetune
from mmfuse.fusion import list_fusions


def runs() -> list[tuple[str, str]]:
    pairs = [(mods, fusion) for mods in ("text,image", "text,image,audio") for fusion in list_fusions()]
    return pairs + [(single, "concat-mlp") for single in ("text", "image", "audio")]


def measure(modalities: str, fusion: str, epochs: int, workdir: Path) -> dict:
    out = workdir / f"{modalities.replace(',', '-')}-{fusion}"
    config = resolve({"model": {"modalities": modalities, "fusion": fusion},
                      "train": {"epochs": epochs, "progress": False}, "out": str(out)})
    summary = finetune(config, echo=lambda *_: None)
    seconds = sum(e["data_s"] + e["compute_s"] for e in summary["epochs"])
    samples = sum(e["train_samples"] for e in summary["epochs"])
    return {"modalities": modalities, "fusion": fusion, "test_accuracy": summary["test"]["accuracy"],
            "test_macro_f1": summary["test"]["macro_f1"], "parameters": summary["parameters"]["total"],
            "train_samples_per_s": round(samples / seconds, 1), "wall_s": summary["train_time_s"]}


def markdown(rows: list[dict], epochs: int) -> str:
    lines = [f"# Fusion ablation on the demo data ({epochs} epochs, tiny towers, seed 0, fp32, 2-core CPU)", "",
             "Produced by `python benchmarks/fusion_ablation.py`. Samples/s count the training loop only",
             "(data wait + compute, no evaluation); the machine is shared, so they are rough.",
             "Accuracy is on the 500 test items.", "",
             "| modalities | fusion | test accuracy | macro-F1 | parameters | train samples/s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['modalities']} | {r['fusion']} | {r['test_accuracy']:.3f} | {r['test_macro_f1']:.3f} | "
                     f"{r['parameters']:,} | {r['train_samples_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for modalities, fusion in runs():
            started = time.perf_counter()
            rows.append(measure(modalities, fusion, args.epochs, Path(tmp)))
            print(json.dumps(rows[-1]), f"({time.perf_counter() - started:.0f} s)", flush=True)
            (out / "fusion-ablation.json").write_text(json.dumps(rows, indent=2))
            (out / "fusion-ablation.md").write_text(markdown(rows, args.epochs))


if __name__ == "__main__":
    main()
