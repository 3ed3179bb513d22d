"""The peer of `recipe_bench.py`: AutoGluon MultiModal on the same manifest, backbones and machine.

Runs in AutoGluon's own virtual environment (it pins another torch), never imports mmfuse:

    AG/bin/python benchmarks/autogluon_peer.py --manifest DIR/manifest/items.jsonl --text-model MINILM_DIR \
        --image-model tf_efficientnet_lite0 --image-size 128 --time-limit 900 --out result.json

The image backbone's ImageNet weights are read from the Hugging Face cache that `recipe_bench.py` lays out for it
(`HF_HUB_CACHE`, offline). Prints and writes one JSON object: val and test accuracy, wall and fit seconds, epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="items.jsonl with caption, image, label, split")
    parser.add_argument("--text-model", required=True, help="local sentence-transformers / HF directory")
    parser.add_argument("--image-model", default="tf_efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--time-limit", type=int, default=900)
    parser.add_argument("--out", required=True, help="result JSON file; the predictor goes beside it")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    import pandas as pd
    from autogluon.multimodal import MultiModalPredictor

    manifest = Path(args.manifest)
    rows = pd.read_json(manifest, lines=True)
    rows["image"] = [str(manifest.parent / p) for p in rows["image"]]
    frames = {s: rows[rows["split"] == s][["caption", "image", "label"]].reset_index(drop=True)
              for s in ("train", "val", "test")}
    out = Path(args.out)
    predictor = MultiModalPredictor(label="label", problem_type="binary", eval_metric="accuracy",
                                    path=str(out.parent / "autogluon-model"), verbosity=2)
    hyper = {
        "model.names": ["hf_text", "timm_image", "fusion_mlp"],
        "model.hf_text.checkpoint_name": args.text_model,
        "model.timm_image.checkpoint_name": args.image_model,
        "model.timm_image.image_size": args.image_size,
        "env.per_gpu_batch_size": args.batch_size,
        "env.batch_size": args.batch_size,
        "env.num_workers": 0,
        "env.num_workers_inference": 0,
        "optim.max_epochs": args.epochs,
    }
    tick = time.perf_counter()
    predictor.fit(frames["train"], tuning_data=frames["val"], hyperparameters=hyper, time_limit=args.time_limit,
                  column_types={"caption": "text", "image": "image_path"}, seed=0)
    fit_s = time.perf_counter() - tick
    result = {
        "peer": "AutoGluon MultiModal", "version": _version(),
        "val_accuracy": float(predictor.evaluate(frames["val"], metrics=["accuracy"])["accuracy"]),
        "test_accuracy": float(predictor.evaluate(frames["test"], metrics=["accuracy"])["accuracy"]),
        "fit_s": round(fit_s, 1), "wall_s": round(time.perf_counter() - started, 1),
        "train_pairs": len(frames["train"]), "batch_size": args.batch_size, "image_size": args.image_size,
        "time_limit": args.time_limit, "max_epochs": args.epochs, "threads": os.cpu_count(),
    }
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("autogluon.multimodal")
    except Exception:  # noqa: BLE001 - a version string is only a label here
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
