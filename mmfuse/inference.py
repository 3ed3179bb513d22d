"""`mmfuse.load(run_dir)`: a trained model with its preprocessing, predicting on plain Python records."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.batch import Collator, to_device
from .errors import ConfigError, DataError
from .model import FusionModel, ModelConfig
from .tasks import create_task
from .train.checkpoint import load_checkpoint
from .train.precision import resolve_device


class Predictor:
    """Predicts labels, probabilities, target values or embeddings for records, as the model's task defines.

    A record is a dict with any of `text` (str), `image` (path, bytes, PIL image, (H, W, 3) array), `audio`
    (path, WAV/FLAC/Ogg bytes, `(array, sample_rate)`) -- a modality may be missing -- and optionally `key`.
    Records are preprocessed by the encoders' own preprocessors.
    """

    def __init__(self, model: FusionModel, config: ModelConfig, device: torch.device, batch_size: int = 128) -> None:
        self.model = model.to(device).eval()
        self.config = config
        self.task = model.task if model.task is not None else create_task(config)
        self.labels = list(config.labels)
        self.device = device
        self.batch_size = batch_size
        self.preprocessors = model.preprocessors()
        self._collate = Collator(self.preprocessors)

    def _batches(self, records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        chunk: list[dict[str, Any]] = []
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                raise DataError(f"record {i} must be a dict of modality -> value, got {type(record).__name__}")
            sample: dict[str, Any] = {"key": str(record.get("key", i))}
            for m, pre in self.preprocessors.items():
                try:
                    sample[m] = pre.transform(record.get(m))
                except Exception as err:  # noqa: BLE001 - report which record and field failed
                    raise DataError(f"record '{sample['key']}': {m}: {err}") from None
            chunk.append(sample)
            if len(chunk) == self.batch_size:
                yield to_device(self._collate(chunk), self.device)
                chunk = []
        if chunk:
            yield to_device(self._collate(chunk), self.device)

    @torch.inference_mode()
    def _heads(self, records: Iterable[dict[str, Any]]) -> torch.Tensor:
        if self.model.head is None:
            self.task.predict(torch.zeros(0))  # raises: the task has no predictions
        out = [self.model(b).float().cpu() for b in self._batches(records)]
        return torch.cat(out) if out else torch.zeros(0, len(self.labels))

    def predict_proba(self, records: Iterable[dict[str, Any]]) -> np.ndarray:
        """(N, C) probabilities, columns in `self.labels` order: softmax over classes (classification), or one
        independent sigmoid per label (multilabel)."""
        return self.task.proba(self._heads(records)).numpy()

    def predict(self, records: Iterable[dict[str, Any]]) -> list[Any]:
        """Per record: the label name (classification), the list of label names at or above the threshold
        (multilabel), or {target name: value} (regression)."""
        return self.task.predict(self._heads(records))

    @torch.inference_mode()
    def embed(self, records: Iterable[dict[str, Any]], normalize: bool = False,
              modality: str | None = None) -> np.ndarray:
        """(N, D) fused embeddings, or with `modality` that modality's own pooled projection (what a contrastive
        model aligns: embed texts and images separately, then compare them); L2-normalised when `normalize`."""
        if modality is not None and modality not in self.model.modalities:
            raise ConfigError(f"the model has no modality '{modality}' (has: {', '.join(self.model.modalities)})")
        out = []
        for b in self._batches(records):
            emb = self.model.encode(b)[modality].pooled if modality else self.model.embed(b)
            out.append(emb.float().cpu())
        emb = torch.cat(out) if out else torch.zeros(0, self.model.fusion.dim)
        return torch.nn.functional.normalize(emb, dim=-1).numpy() if normalize else emb.numpy()


def load(run_dir: str | Path, checkpoint: str = "best", device: str = "cpu", batch_size: int = 128) -> Predictor:
    """Load a finished run (`run_dir/checkpoints/<checkpoint>`) or a checkpoint directory itself."""
    path = Path(run_dir)
    if not path.exists():
        raise ConfigError(f"run directory {path} does not exist")
    ckpt = path if (path / "config.json").exists() else path / "checkpoints" / checkpoint
    model, config, _ = load_checkpoint(ckpt)
    return Predictor(model, config, resolve_device(device), batch_size)
