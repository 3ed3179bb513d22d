"""kill -9 at several random steps, `--resume` after each, and the final metrics must equal an uninterrupted run's.

    python benchmarks/kill9_resume.py                      # demo data, configs/demo.yaml, 2 epochs, 3 kills
    python benchmarks/kill9_resume.py --kills 5 --epochs 3 --seed 7 --workers 1 --out /tmp/kill9

Runs `mmfuse finetune` as a subprocess: once uninterrupted (the reference), then again, sending SIGKILL whenever
metrics.jsonl reaches the next randomly drawn step and resuming with `mmfuse finetune --resume`; compares the two
metrics.json files without their wall-clock fields. Exit code 0 when they are equal, 1 when not.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def comparable(metrics: dict[str, Any]) -> dict[str, Any]:
    """metrics.json without wall-clock figures."""
    epochs = [{k: v for k, v in e.items() if k not in ("data_s", "compute_s")} for e in metrics["epochs"]]
    return {"val": metrics["val"], "test": metrics["test"], "best_epoch": metrics["best_epoch"], "epochs": epochs,
            "steps": metrics["steps"], "skipped": metrics["skipped"]}


def command(args: argparse.Namespace, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "mmfuse", "finetune", "--config", str(args.config), "--out", str(out),
           "--epochs", str(args.epochs), "--no-progress", "--workers", str(args.workers),
           "--set", "train.log_every=1", "--set", f"train.checkpoint_every={args.checkpoint_every}"]
    return cmd + (["--data", args.data] if args.data else [])


def logged_step(out: Path) -> int:
    """The last optimizer step written to metrics.jsonl (0 before the first)."""
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue  # a line being written
    return 0


def run_until(cmd: list[str], out: Path, kill_at: int | None) -> tuple[int, int]:
    """Run `cmd`; SIGKILL it once metrics.jsonl reaches step `kill_at`. Returns (exit code, step seen at kill)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    seen = 0
    while proc.poll() is None:
        if kill_at is not None:
            seen = logged_step(out)
            if seen >= kill_at:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.02)
    _, err = proc.communicate()
    if proc.returncode not in (0, -signal.SIGKILL):
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-2000:]}")
    return proc.returncode, seen


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    p.add_argument("--data", help="shard directory (default: the embedded demo data)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--checkpoint-every", type=int, default=5)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="seed of the kill steps")
    p.add_argument("--out", default="/tmp/mmfuse-kill9")
    args = p.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    tick = time.perf_counter()
    run_until(command(args, out / "reference"), out / "reference", None)
    reference = json.loads((out / "reference" / "metrics.json").read_text())
    total = reference["steps"]
    print(f"reference: {total} steps uninterrupted in {time.perf_counter() - tick:.0f}s, test accuracy "
          f"{reference['test']['accuracy']:.4f}")
    rng = random.Random(args.seed)
    candidates = range(args.checkpoint_every + 1, total)
    kills = sorted(rng.sample(candidates, min(args.kills, len(candidates))))
    run_dir = out / "killed"
    cmd = command(args, run_dir)
    for target in kills:
        code, seen = run_until(cmd, run_dir, target)
        if code == 0:
            print(f"run finished before step {target}")
            break
        state = run_dir / "checkpoints" / "resume" / "train_state.pt"
        saved = torch.load(state, weights_only=True)["step"] if state.exists() else None
        print(f"kill -9 at step {seen} (drawn {target}); resumable checkpoint at step {saved}")
        cmd = [sys.executable, "-m", "mmfuse", "finetune", "--resume", str(run_dir), "--no-progress"]
    run_until(cmd, run_dir, None)
    got = json.loads((run_dir / "metrics.json").read_text())
    equal = comparable(got) == comparable(reference)
    print(f"after {len(kills)} kills + resumes: final metrics {'EQUAL' if equal else 'DIFFERENT'} to the "
          f"uninterrupted run (test accuracy {got['test']['accuracy']:.4f} vs {reference['test']['accuracy']:.4f}, "
          f"val {got['val']} vs {reference['val']}, steps {got['steps']} vs {total})")
    if not equal:
        for i, (a, b) in enumerate(zip(comparable(got)["epochs"], comparable(reference)["epochs"], strict=False)):
            if a != b:
                print(f"  epoch {i + 1}: resumed {a}\n           reference {b}")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
