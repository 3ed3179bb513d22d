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
from .train.checkpoint import load_checkpoint
from .train.precision import resolve_device


class Predictor:
    """Predicts labels, probabilities or fused embeddings for records.

    A record is a dict with any of `text` (str), `image` (path, bytes, PIL image, (H, W, 3) array), `audio`
    (path, WAV/FLAC/Ogg bytes, `(array, sample_rate)`) -- a modality may be missing -- and optionally `key`.
    Records are preprocessed by the encoders' own preprocessors.
    """

    def __init__(self, model: FusionModel, config: ModelConfig, device: torch.device, batch_size: int = 128) -> None:
        self.model = model.to(device).eval()
        self.config = config
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
    def predict_proba(self, records: Iterable[dict[str, Any]]) -> np.ndarray:
        """(N, C) class probabilities, columns in `self.labels` order."""
        out = [torch.softmax(self.model(b).float(), -1).cpu() for b in self._batches(records)]
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.labels)), dtype=np.float32)

    def predict(self, records: Iterable[dict[str, Any]]) -> list[str]:
        """The predicted label name of each record."""
        return [self.labels[i] for i in self.predict_proba(records).argmax(-1)]

    @torch.inference_mode()
    def embed(self, records: Iterable[dict[str, Any]], normalize: bool = False) -> np.ndarray:
        """(N, D) fused embeddings; L2-normalised when `normalize`."""
        out = [self.model.embed(b).float().cpu() for b in self._batches(records)]
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
