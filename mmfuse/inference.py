"""`mmfuse.load(run_dir | preset)`: a model with its preprocessing, embedding (and predicting) plain Python records.

    Embedder   load, preprocess, embed: `embed` (fused vectors), `embed_modalities` (per modality), `encode`
    Predictor  an `Embedder` with the head of a fine-tuned run: `predict`, `predict_proba`

`load` gives a `Predictor` for a run directory and an `Embedder` for a model preset (untrained: nothing to predict).
Light: loading and embedding import neither the trainer nor the data pipeline (webdataset), peft or matplotlib.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .data.batch import Collator, to_device
from .errors import ConfigError, DataError
from .fingerprint import weights_fingerprint
from .model import FusionModel, ModelConfig
from .names import inside
from .precision import autocast, choose_precision, resolve_device, tower_autocast
from .records import error_reason, length_order, windows
from .serving import cast_inputs, check_backend, quantize_int8
from .tasks import create_task


class Embedder:
    """Embeddings of records: fused (`embed`), per modality (`embed_modalities`) and the encoders' own pooled vectors
    (`encode`). Any `FusionModel` embeds; its head, if it has one, is not used (`Predictor` adds it).

    A record is a dict with any of `text` (str), `image` (path, bytes, PIL image, (H, W, 3) array), `audio`
    (path, WAV/FLAC/Ogg bytes, `(array, sample_rate)`) -- a modality may be missing -- and optionally `key`.
    Records are preprocessed by the encoders' own preprocessors. Safe to call from several threads at once.

    `precision` (fp32, bf16, fp16 on CUDA, or auto: by hardware, as `mmfuse.precision`) is the autocast the
    PyTorch model runs under; every output is returned as float32. Only the fp32 backend takes another precision.
    """

    sort_window_batches = 64
    """`embed` sorts records by text length within windows of this many batches (then restores the order)."""
    decode_threads = 1
    """Threads decoding records (JPEG, audio files) in `embed` and `encode`; above 1, a window is decoded in
    parallel, and the next window while the model runs on this one. Opt-in: on 2 shared cores, where the model's
    own 2 threads already fill the CPU, 2 decode threads measured 0.94x of decoding in the calling thread."""

    def __init__(self, model: FusionModel, device: torch.device, batch_size: int = 128, source: str = "",
                 backend: str = "fp32", onnx_file: str | Path | None = None, precision: str = "fp32") -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        backend = check_backend(backend, device)  # `auto` resolved by hardware
        self.precision = resolve_precision(precision, device, backend, model)
        self.model = model.to(device).eval()
        self.backend = backend
        self.device = device
        self.batch_size = batch_size
        self.source = source
        self.preprocessors = model.preprocessors()
        self._collate = Collator(self.preprocessors)
        self._lock = threading.Lock()  # Hugging Face fast tokenizers must not be called from two threads at once
        self._fingerprint: str | None = None
        self._onnx: Any = None
        if backend in ("int8", "bf16"):
            self.fingerprint()  # of the fp32 weights: the model's identity, whatever the backend
            # copies, like quantize_int8: the caller's fp32 model stays as it is
            self.model = quantize_int8(self.model) if backend == "int8" else copy.deepcopy(model).to(torch.bfloat16)
        elif backend == "onnx":
            self._onnx = onnx_session(self, onnx_file)
        elif onnx_file is not None:
            raise ConfigError("onnx_file is read by backend='onnx' only")

    @property
    def modalities(self) -> list[str]:
        """The modalities the model reads, sorted."""
        return self.model.modalities

    @property
    def session(self) -> Any:
        """The onnxruntime session (`onnx_export.OnnxSession`) of the onnx backend; None for the others."""
        return self._onnx

    @property
    def dim(self) -> int:
        """Width D of the fused and the per-modality embeddings."""
        return self.model.fusion.dim

    def fingerprint(self) -> str:
        """sha256 of the fp32 weights (names, dtypes, shapes, values): equal fingerprints embed alike (per backend)."""
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.model)
        return self._fingerprint

    def select(self, modalities: str | Sequence[str] | None) -> list[str]:
        """Validate a modality subset ('text,image', a list, or None for all) and return it sorted."""
        if modalities is None:
            return self.modalities
        names = [m.strip() for m in modalities.split(",")] if isinstance(modalities, str) else list(modalities)
        unknown = [m for m in names if m not in self.modalities]
        if unknown or not names:
            raise ConfigError(f"modalities {', '.join(unknown) or '(none)'}: this model reads "
                              f"{', '.join(self.modalities)}")
        return sorted(set(names))

    def prepare(self, record: Any, index: int = 0, modalities: Sequence[str] | None = None,
                failed: dict[str, str] | None = None) -> dict[str, Any]:
        """Decode one record into a sample (absent or unselected modalities are None).

        A field that fails to decode raises `DataError` naming the record and field -- or, when a `failed` dict is
        given, is recorded there ({modality: reason}) and treated as absent.
        """
        if not isinstance(record, dict):
            raise DataError(f"record {index} must be a dict of modality -> value, got {type(record).__name__}")
        sample: dict[str, Any] = {"key": str(record.get("key", index))}
        for m, pre in self.preprocessors.items():
            sample[m] = None
            if modalities is not None and m not in modalities:
                continue
            try:
                sample[m] = pre.transform(record.get(m))
            except Exception as err:  # noqa: BLE001 - report which record and field failed
                reason = error_reason(err)
                if failed is None:
                    raise DataError(f"record '{sample['key']}': {m}: {reason}") from None
                failed[m] = reason
        return sample

    def batches(self, records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Records -> collated batches of `batch_size` in input order (no length sorting), on the model's device --
        what the model's `forward` reads. A record with none of the model's modalities is a `DataError`."""
        chunk: list[dict[str, Any]] = []
        for i, record in enumerate(records):
            sample = self.prepare(record, i)
            if all(sample[m] is None for m in self.preprocessors):  # the head would answer from its bias alone
                raise DataError(f"record '{sample['key']}' has none of the model's modalities "
                                f"({', '.join(self.modalities)}) set: nothing to predict from")
            chunk.append(sample)
            if len(chunk) == self.batch_size:
                yield self._to_device(self._collate(chunk))
                chunk = []
        if chunk:
            yield self._to_device(self._collate(chunk))

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A collated batch on the model's device, floating inputs in the weights' dtype (bf16 backend)."""
        batch = to_device(batch, self.device)
        return cast_inputs(batch, torch.bfloat16) if self.backend == "bf16" else batch

    @torch.inference_mode()
    def embed_samples(self, samples: list[dict[str, Any]], modalities: Sequence[str]) -> dict[str, torch.Tensor]:
        """Prepared samples -> {'fused': (B, D), <m>: (B, D) projected pooled vector (zeros where absent),
        'present_<m>': (B,) bool} on the CPU. Encoders of modalities no sample has are not run."""
        if self._onnx is not None:
            return self._onnx_embed(samples, modalities)
        with self._lock:
            batch = Collator({m: self.preprocessors[m] for m in modalities})(samples)
        batch = self._to_device(batch)
        active = [m for m in modalities if bool(batch[f"present_{m}"].any())] or list(modalities)
        with autocast(self.device, self.precision):
            features = self.model.encode(batch, active)
            fused = self.model.fusion(features)
        out = {"fused": fused.float().cpu()}  # (B, D)
        for m in modalities:
            present = batch[f"present_{m}"]
            out[f"present_{m}"] = present.cpu()
            vectors = features[m].pooled.float() * present[:, None] if m in features else \
                torch.zeros(len(samples), self.dim)
            out[m] = vectors.cpu()
        return out

    def _onnx_run(self, samples: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        with self._lock:
            batch = self._collate(samples)  # the graph reads every modality's inputs; unselected ones are absent
        return batch, self._onnx.run(batch)

    def _onnx_embed(self, samples: list[dict[str, Any]], modalities: Sequence[str]) -> dict[str, torch.Tensor]:
        batch, outputs = self._onnx_run(samples)
        out = {"fused": outputs["fused"]}  # (B, D)
        for m in modalities:
            present = batch[f"present_{m}"]
            out[f"present_{m}"] = present
            out[m] = outputs[f"{m}_projected"] * present[:, None]  # (B, D), zeros where absent
        return out

    def embed(self, records: Iterable[dict[str, Any]], normalize: bool = False,
              modalities: str | Sequence[str] | None = None, modality: str | None = None) -> np.ndarray:
        """Fused embeddings (N, D) float32, in input order; L2-normalised when `normalize`.

        `modalities` (default: all the model reads) embeds from that subset only, the others treated as absent.
        `modality='text'` returns that modality's own vectors (N, D) instead -- its encoder's pooled output projected
        to D, zeros where absent: what a contrastive model aligns (embed texts and images separately, then compare).
        Records are batched internally, longest texts together, so padding stays short.
        """
        if modality is not None:
            if modality not in self.modalities:
                raise ConfigError(f"the model has no modality '{modality}' (has: {', '.join(self.modalities)})")
            return self.embed_modalities(records, normalize, [modality])[modality]
        return self.embed_modalities(records, normalize, modalities)["fused"]

    def embed_modalities(self, records: Iterable[dict[str, Any]], normalize: bool = False,
                         modalities: str | Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """{'fused': (N, D), <m>: (N, D), 'present_<m>': (N,) bool} for the selected modalities (default: all the
        model reads; the others treated as absent), float32 vectors in input order, L2-normalised when `normalize`.
        A modality's vector is its encoder's pooled output projected to D, zeros where the record lacks it."""
        selected = self.select(modalities)
        parts = [self.embed_prepared(samples, selected) for samples in self._prepared(records, selected)]
        if parts:
            out = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
        else:
            out = {"fused": torch.zeros(0, self.dim), **{m: torch.zeros(0, self.dim) for m in selected},
                   **{f"present_{m}": torch.zeros(0, dtype=torch.bool) for m in selected}}
        if normalize:
            out = {k: v if k.startswith("present_") else torch.nn.functional.normalize(v, dim=-1)  # 0 stays 0
                   for k, v in out.items()}
        return {k: v.numpy() for k, v in out.items()}

    def _prepared(self, records: Iterable[dict[str, Any]], selected: Sequence[str]) -> Iterator[list[dict[str, Any]]]:
        """Windows of prepared samples, in input order. With `decode_threads` > 1 a pool decodes each window's
        records in parallel and starts on the next window before this one is handed back (to the model)."""
        size = self.batch_size * self.sort_window_batches
        if self.decode_threads <= 1:
            for start, window in windows(records, size):
                yield [self.prepare(r, start + i, selected) for i, r in enumerate(window)]
            return
        with ThreadPoolExecutor(self.decode_threads, thread_name_prefix="mmfuse-decode") as pool:
            pending: list[Future] = []
            for start, window in windows(records, size):
                submitted = [pool.submit(self.prepare, r, start + i, selected) for i, r in enumerate(window)]
                if pending:
                    yield [f.result() for f in pending]  # the first failing record, in input order, raises
                pending = submitted
            if pending:
                yield [f.result() for f in pending]

    def embed_prepared(self, samples: list[dict[str, Any]], modalities: Sequence[str]) -> dict[str, torch.Tensor]:
        """`embed_samples` over prepared samples of any number, in batches of similar text length; input order."""
        return self._in_order(samples, lambda batch: self.embed_samples(batch, modalities))

    def encode(self, records: Iterable[dict[str, Any]], modality: str = "text", normalize: bool = False) -> np.ndarray:
        """(N, W) the `modality` encoder's own pooled vectors, before projection and fusion (for a pretrained
        sentence encoder such as all-MiniLM-L6-v2 with mean pooling: its sentence embedding). Zeros where absent."""
        selected = self.select([modality])
        width = self.model.encoders[modality].width
        parts = [self._in_order(samples, lambda batch: {"pooled": self._pooled(batch, modality)})["pooled"]
                 for samples in self._prepared(records, selected)]
        out = torch.cat(parts) if parts else torch.zeros(0, width)
        return (torch.nn.functional.normalize(out, dim=-1) if normalize else out).numpy()

    @torch.inference_mode()
    def _pooled(self, samples: list[dict[str, Any]], modality: str) -> torch.Tensor:
        if self._onnx is not None:
            batch, outputs = self._onnx_run(samples)
            return outputs[f"{modality}_pooled"] * batch[f"present_{modality}"][:, None]  # (B, W)
        with self._lock:
            batch = Collator({modality: self.preprocessors[modality]})(samples)
        batch = self._to_device(batch)
        encoder = self.model.encoders[modality]
        with autocast(self.device, self.precision), tower_autocast(encoder):
            pooled = encoder(batch).pooled.float()  # (B, W)
        return (pooled * batch[f"present_{modality}"][:, None]).cpu()

    def _in_order(self, samples: list[dict[str, Any]], run: Any) -> dict[str, torch.Tensor]:
        """`run(batch of samples) -> {name: (B, ...)}` over length-sorted batches, joined back in input order."""
        order = length_order(samples)
        indices, parts = [], []
        for b in range(0, len(order), self.batch_size):
            picked = order[b:b + self.batch_size]
            parts.append(run([samples[i] for i in picked]))
            indices += picked
        out = {}
        for name in parts[0] if parts else []:
            joined = torch.cat([p[name] for p in parts])
            out[name] = torch.empty_like(joined)
            out[name][torch.tensor(indices)] = joined
        return out


class Predictor(Embedder):
    """An `Embedder` with the head of a fine-tuned model: labels, probabilities or target values, as the task of its
    `ModelConfig` (`config.task`) defines. Safe to call from several threads at once, like the `Embedder`."""

    def __init__(self, model: FusionModel, config: ModelConfig, device: torch.device, batch_size: int = 128,
                 source: str = "", backend: str = "fp32", onnx_file: str | Path | None = None,
                 precision: str = "fp32") -> None:
        super().__init__(model, device, batch_size, source, backend, onnx_file, precision)
        self.config = config
        self.task = create_task(config)  # from the checkpoint's ModelConfig: the model knows no task
        self.task.bind(self.model)
        self.labels = list(config.labels)

    @torch.inference_mode()
    def _heads(self, records: Iterable[dict[str, Any]]) -> torch.Tensor:
        if self.model.head is None:
            self.task.predict(torch.zeros(0))  # raises: the task has no predictions
        out = []
        for batch in self.batches(records):  # decoded and collated outside autocast
            with autocast(self.device, self.precision):
                logits = self.model(batch)  # (B, C)
            out.append(logits.float().cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.labels))

    def predict_proba(self, records: Iterable[dict[str, Any]]) -> np.ndarray:
        """(N, C) probabilities, columns in `self.labels` order: softmax over classes (classification), or one
        independent sigmoid per label (multilabel)."""
        return self.task.proba(self._heads(records)).numpy()

    def predict(self, records: Iterable[dict[str, Any]]) -> list[Any]:
        """Per record: the label name (classification), the list of label names at or above the threshold
        (multilabel), or {target name: value} (regression)."""
        return self.task.predict(self._heads(records))


def resolve_precision(precision: str, device: torch.device, backend: str = "fp32",
                      model: torch.nn.Module | None = None) -> str:
    """The autocast precision an `Embedder` on `device` runs: `choose_precision`'s answer for the fp32 backend.
    The bf16, int8 and onnx backends set their own number format and run without autocast: `auto` resolves to fp32
    for them, an explicit bf16 / fp16 is a `ConfigError`."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, got '{precision}'")
    if backend != "fp32":
        if precision not in ("auto", "fp32"):
            raise ConfigError(f"precision '{precision}' (autocast) applies to backend='fp32'; the {backend} backend "
                              f"sets its own number format")
        return "fp32"
    return choose_precision(device, precision, model)


def onnx_session(embedder: Embedder, onnx_file: str | Path | None) -> Any:
    """The onnxruntime session of `embedder`'s weights: `onnx_file` (an `mmfuse export-onnx` output) or the cached
    export (made on first use)."""
    try:
        from .onnx_export import OnnxSession, cached_export
    except ImportError as err:
        raise ConfigError(f"the onnx backend needs onnxruntime and onnx ({err.name} is missing): "
                          f"pip install 'mmfuse[onnx]'") from None
    fingerprint = embedder.fingerprint()
    path = cached_export(embedder.model, embedder.preprocessors, fingerprint) if onnx_file is None else Path(onnx_file)
    return OnnxSession(path, fingerprint, embedder.modalities)


def load(source: str | Path, checkpoint: str = "best", device: str = "cpu", batch_size: int = 128,
         backend: str = "fp32", onnx_file: str | Path | None = None, precision: str = "fp32") -> Embedder:
    """A `Predictor` of a finished run (`run_dir/checkpoints/<checkpoint>`) or a checkpoint directory; an `Embedder`
    of a model preset name.

    `backend='bf16'` casts the weights to bfloat16 (fast where bf16 is native: CPUs with avx512_bf16 / AMX, CUDA);
    `backend='auto'` picks by hardware (`mmfuse.serving`): bf16 there, else fp32.
    `backend='int8'` (CPU) quantises the encoders' attention projections to int8 (`mmfuse.serving`); check its
    vectors against fp32 with `mmfuse.serving.cosine_parity` on a sample of your items.
    `backend='onnx'` (CPU, needs the `onnx` extra) embeds and encodes with onnxruntime: the graph `onnx_file` (from
    `mmfuse export-onnx`, checked against the weights' fingerprint), else one exported on first use into
    `<mmfuse cache>/onnx/<fingerprint>/` ($MMFUSE_CACHE). `predict` still runs in PyTorch.
    `precision` ('fp32', 'bf16', 'fp16' on CUDA, or 'auto' by hardware) runs the fp32 backend's model under that
    autocast (e.g. `device='cuda', precision='bf16'`); outputs are float32 either way.

    A preset (`mmfuse list`; or a preset .json file) builds its encoders -- pretrained where the preset says so --
    with projections and fusion initialised from seed 0 and no head: the frozen, untuned baseline embedder.
    """
    path = Path(source)
    options: dict[str, Any] = {"batch_size": batch_size, "source": str(source), "backend": backend,
                               "onnx_file": onnx_file, "precision": precision}
    if path.is_dir():
        ckpt = path if (path / "config.json").exists() else inside(path / "checkpoints", checkpoint)
        if ckpt is None:
            raise ConfigError(f"checkpoint {checkpoint!r} is not a checkpoint name inside {path / 'checkpoints'}")
        model, config, _ = load_checkpoint(ckpt)
        return Predictor(model, config, resolve_device(device), **options)
    from .presets import build_untrained, list_presets, preset_config

    if str(source) not in list_presets() and not (str(source).endswith(".json") and path.is_file()):
        raise ConfigError(f"'{source}' is neither a run directory nor a model preset "
                          f"(presets: {', '.join(list_presets())})")
    model = build_untrained(preset_config(str(source)))
    return Embedder(model, resolve_device(device), **options)
