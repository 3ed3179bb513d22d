"""Random-init audio towers on a small spoken-word set: `tiny-audio` (spectrogram ViT), `logmel-stats` and
`small-cnn-audio`, each as the audio tower of a one-modality classifier (`concat-mlp`, `model.dim` 128) trained on
the same clips, with the trainer's recipe (AdamW, weight decay 0.05, 5% warmup then cosine, gradient
clipping at 1) and the same epochs and seed. Reports train and held-out accuracy after each epoch; a
tower that memorises shows high train and chance test accuracy. Data: `mmfuse.data.demo_words.spoken_words`
(synthetic words, classes differ in spectral statistics), or with `--voice espeak` the ten digit words "zero" ..
"nine" spoken by espeak-ng (`apt-get install espeak-ng`) in varied English voices, speeds and pitches with light
noise, the test clips in voice variants the training clips never use (`espeak_words`). Writes
benchmarks/results/audio-small-data[-espeak].{json,md}.

    python benchmarks/audio_small_data.py [--classes 10] [--train-per-class 160] [--test-per-class 40] [--epochs 10]
    python benchmarks/audio_small_data.py --voice espeak --train-per-class 60
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import torch

from mmfuse.data.batch import Collator
from mmfuse.data.demo_words import spoken_words
from mmfuse.model_config import EncoderSpec, ModelConfig
from mmfuse.tasks import create_model_and_task

TOWERS = {
    "tiny-audio": {"width": 64, "layers": 2, "heads": 2, "n_mels": 32, "patch_size": 8, "max_seconds": 1.0},
    "logmel-stats": {"max_seconds": 1.0},
    "small-cnn-audio": {"max_seconds": 1.0},
}
"""Each tower with the options it is compared at: `tiny-audio` as the demo runs it, the others at their defaults."""


DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ESPEAK_VOICES = ("en-gb", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
TRAIN_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3", "klatt", "klatt2")
TEST_VARIANTS = ("m6", "m7", "f4", "f5", "klatt3")
"""espeak-ng voice variants (`-v en-us+f3`): the test clips' are never heard in training."""


def espeak_words(per_class: int, classes: int, seed: int, variants: tuple[str, ...]) -> tuple[list, list[int]]:
    """`per_class` clips of each of the first `classes` digit words: a random voice of `ESPEAK_VOICES` and variant of
    `variants`, speed 110-200 words/min, pitch 20-80, resampled to 16 kHz, at a random offset in a 1 s clip, gain
    0.3-1 and white noise at 15-30 dB SNR. Returns (waves (16000,) float32, labels)."""
    rng = np.random.default_rng(seed)
    waves, labels = [], []
    for k in [k for k in range(classes) for _ in range(per_class)]:
        voice = f"{rng.choice(ESPEAK_VOICES)}+{rng.choice(variants)}"
        speed, pitch = int(rng.integers(110, 201)), int(rng.integers(20, 81))
        raw = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", DIGITS[k]],
                             capture_output=True, check=True).stdout
        with wave.open(io.BytesIO(raw)) as w:
            rate, frames = w.getframerate(), w.readframes(w.getnframes())
        speech = np.frombuffer(frames, dtype=np.int16).astype(np.float32) / 32768
        speech = np.interp(np.arange(0, len(speech), rate / 16_000), np.arange(len(speech)), speech)[:16_000]
        clip = np.zeros(16_000, dtype=np.float32)
        start = int(rng.integers(0, 16_000 - len(speech) + 1))
        clip[start: start + len(speech)] = speech / (np.abs(speech).max() + 1e-8) * rng.uniform(0.3, 1.0)
        noise = rng.standard_normal(16_000) * math.sqrt(np.mean(clip ** 2) / 10 ** (rng.uniform(15, 30) / 10))
        waves.append((clip + noise).clip(-1, 1).astype(np.float32))
        labels.append(k)
    return waves, labels


def prepare(model: torch.nn.Module, waves: list, labels: list[int]) -> list[dict]:
    """Clips -> transformed samples (decoded and featurised once, as the loader's workers would)."""
    pre = model.preprocessors()["audio"]
    return [{"key": str(i), "label": label, "audio": pre.transform((wave, 16_000))}
            for i, (wave, label) in enumerate(zip(waves, labels, strict=True))]


def accuracy(model: torch.nn.Module, samples: list[dict], collate: Collator, batch_size: int) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            batch = collate(samples[start: start + batch_size])
            correct += (model(batch).argmax(-1) == batch["label"]).sum().item()
    return correct / len(samples)


def warmup_cosine(step: int, total: int, warmup: float = 0.05) -> float:
    """The trainer's learning-rate factor (`train.warmup` 0.05, then cosine to 0)."""
    ramp = max(1, int(warmup * total))
    if step < ramp:
        return (step + 1) / ramp
    return 0.5 * (1 + math.cos(math.pi * (step - ramp) / max(1, total - ramp)))


def run(name: str, data: dict, args: argparse.Namespace) -> dict:
    """Train tower `name` for `args.epochs` epochs; train / test accuracy after each."""
    torch.manual_seed(args.seed)
    config = ModelConfig(modalities=["audio"], encoders={"audio": EncoderSpec(name, TOWERS[name], pretrained=False)},
                         labels=[str(k) for k in range(args.classes)])
    model, task = create_model_and_task(config)
    train, test = prepare(model, *data["train"]), prepare(model, *data["test"])
    collate = Collator(model.preprocessors())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = args.epochs * -(-len(train) // args.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, steps))
    order = random.Random(args.seed)
    epochs = []
    for epoch in range(1, args.epochs + 1):
        model.train()
        order.shuffle(train)
        for start in range(0, len(train), args.batch_size):
            batch = collate(train[start: start + args.batch_size])
            loss = task.loss(model(batch, outputs=True), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
        epochs.append({"epoch": epoch, "train_accuracy": accuracy(model, train, collate, 256),
                       "test_accuracy": accuracy(model, test, collate, 256)})
        print(f"{name:<16} epoch {epoch:>3}  train {epochs[-1]['train_accuracy']:.3f}  "
              f"test {epochs[-1]['test_accuracy']:.3f}", flush=True)
    parameters = sum(p.numel() for p in model.encoders["audio"].parameters())
    return {"encoder": name, "kwargs": TOWERS[name], "tower_parameters": parameters, "epochs": epochs}


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    words = "espeak-ng digit words" if args.voice == "espeak" else "synthetic spoken words"
    lines = [f"# Random-init audio towers on {args.classes} {words} "
             f"({args.train_per_class} train / {args.test_per_class} test clips per word)", "",
             f"Produced by `python benchmarks/audio_small_data.py{' --voice espeak' * (args.voice == 'espeak')}` "
             f"({args.epochs} epochs, batch {args.batch_size}, "
             f"AdamW lr {args.lr}, seed {args.seed}); chance is {1 / args.classes:.3f}.", "",
             "| encoder | tower parameters | train accuracy | test accuracy | best test accuracy (epoch) |",
             "|---|---|---|---|---|"]
    for r in rows:
        last = r["epochs"][-1]
        best = max(r["epochs"], key=lambda e: e["test_accuracy"])
        lines.append(f"| `{r['encoder']}` | {r['tower_parameters']:,} | {last['train_accuracy']:.3f} | "
                     f"{last['test_accuracy']:.3f} | {best['test_accuracy']:.3f} ({best['epoch']}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--train-per-class", type=int, default=160)
    parser.add_argument("--test-per-class", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoders", default=",".join(TOWERS), help="comma-separated subset of " + ",".join(TOWERS))
    parser.add_argument("--voice", choices=("synthetic", "espeak"), default="synthetic",
                        help="synthetic: mmfuse.data.demo_words; espeak: digit words spoken by espeak-ng")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    if args.voice == "espeak":
        if shutil.which("espeak-ng") is None:
            print("audio_small_data: --voice espeak needs espeak-ng (apt-get install espeak-ng); skipped")
            return
        if args.classes > len(DIGITS):
            sys.exit(f"audio_small_data: --voice espeak has {len(DIGITS)} words, --classes {args.classes}")
        data = {"train": espeak_words(args.train_per_class, args.classes, args.seed, TRAIN_VARIANTS),
                "test": espeak_words(args.test_per_class, args.classes, args.seed + 1000, TEST_VARIANTS)}
    else:
        data = {"train": spoken_words(args.train_per_class, args.classes, seed=args.seed),
                "test": spoken_words(args.test_per_class, args.classes, seed=args.seed + 1000)}
    rows = [run(name, data, args) for name in args.encoders.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "audio-small-data" + "-espeak" * (args.voice == "espeak")
    (out / f"{stem}.json").write_text(json.dumps({"args": vars(args), "runs": rows}, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown(rows, args))
    print(markdown(rows, args))


if __name__ == "__main__":
    main()
