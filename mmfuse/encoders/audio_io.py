"""Audio input shared by every audio encoder: decode with `soundfile`, resample, crop, featurise, pad.

Batch entries: `audio` (B, F, ...) float -- per-frame features (log-mel frames, or raw samples for waveform
models), padded to the longest clip in the batch -- and `audio_mask` (B, F) bool, True for real frames.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import Preprocessor


def _read_head(source: Any, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """The first `max_seconds` (all when None) of a file soundfile reads, plus 10 ms for the resampler's filter
    (so resampling the head gives the same samples as resampling the whole clip). Returns (N, channels), rate."""
    import soundfile as sf

    with sf.SoundFile(source) as f:
        frames = -1 if max_seconds is None else int(math.ceil(max_seconds * f.samplerate)) + f.samplerate // 100
        return f.read(frames=frames, dtype="float32", always_2d=True), f.samplerate


def decode_audio(value: Any, default_rate: int, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Bytes (any format soundfile reads: WAV, FLAC, Ogg), a file path, `(array, rate)`, a `{"array",
    "sampling_rate"}` dict or a bare array / tensor (taken to be at `default_rate`) -> mono float32 (N,), rate.

    From bytes and files only the first `max_seconds` (plus 10 ms) are read, never the whole clip.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        data, rate = _read_head(io.BytesIO(bytes(value)), max_seconds)
    elif isinstance(value, (str, Path)):
        data, rate = _read_head(str(value), max_seconds)
    elif isinstance(value, dict) and "array" in value:
        data, rate = np.asarray(value["array"], dtype=np.float32), int(value.get("sampling_rate", default_rate))
    elif isinstance(value, tuple) and len(value) == 2:
        data, rate = np.asarray(value[0], dtype=np.float32), int(value[1])
    elif isinstance(value, (np.ndarray, torch.Tensor)):
        data, rate = np.asarray(value, dtype=np.float32), default_rate
    else:
        raise TypeError(f"cannot read audio from {type(value).__name__}")
    if data.ndim == 2:  # (N, channels) from soundfile, or (channels, N) from a user array
        data = data.mean(axis=1) if data.shape[0] >= data.shape[1] else data.mean(axis=0)
    if data.ndim != 1:
        raise TypeError(f"audio must be (samples,) or (samples, channels), got shape {data.shape}")
    if data.size == 0:
        raise ValueError("empty audio clip")
    return np.ascontiguousarray(data, dtype=np.float32), rate


class LogMelFrames:
    """Kaldi-style log-mel filterbank (AST's input): wave (N,) -> (frames, n_mels), normalised by AST's statistics.

    A picklable callable (runs in loader workers). 25 ms windows every 10 ms; clips shorter than one window are
    zero-padded to one.
    """

    def __init__(self, sample_rate: int, n_mels: int, mean: float = -4.2677393, std: float = 4.5689974) -> None:
        self.sample_rate, self.n_mels, self.mean, self.std = sample_rate, n_mels, mean, std

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        import torchaudio.compliance.kaldi as kaldi

        window = int(0.025 * self.sample_rate)
        if wave.numel() < window:
            wave = torch.nn.functional.pad(wave, (0, window - wave.numel()))
        fbank = kaldi.fbank(wave[None], sample_frequency=self.sample_rate, num_mel_bins=self.n_mels,
                            htk_compat=True, window_type="hanning", dither=0.0, frame_shift=10.0, use_energy=False)
        return (fbank - self.mean) / (2 * self.std)  # (frames, n_mels)


class AudioPreprocessor(Preprocessor):
    """Decodes, mixes to mono, resamples to `sample_rate`, crops to `max_seconds`, then applies `features`.

    `features` maps a wave (N,) to per-frame features (F, ...) (default: the wave itself, F = N), or to
    `(features, real_frames)` when it pads the clip itself (HF extractors of fixed-length models). `collate` pads
    to the longest clip of the batch (or to `pad_to` frames when the model needs a fixed length) and returns
    `audio` (B, F, ...) and `audio_mask` (B, F). An absent clip becomes `min_frames` zero frames, masked out.
    """

    modality = "audio"

    def __init__(self, sample_rate: int, max_seconds: float = 10.0,
                 features: Callable[[torch.Tensor], torch.Tensor] | None = None, pad_to: int | None = None,
                 min_frames: int = 1) -> None:
        self.sample_rate = sample_rate
        self.max_samples = int(round(max_seconds * sample_rate))
        self.features = features
        self.pad_to = pad_to
        self.min_frames = min_frames

    def transform(self, value: Any) -> torch.Tensor | tuple[torch.Tensor, int] | None:
        if value is None:
            return None
        data, rate = decode_audio(value, self.sample_rate, self.max_samples / self.sample_rate)
        wave = torch.from_numpy(data)
        if rate != self.sample_rate:
            import torchaudio.functional as AF

            wave = AF.resample(wave, rate, self.sample_rate)
        wave = wave[: self.max_samples]
        return self.features(wave) if self.features is not None else wave

    def collate(self, values: list[torch.Tensor | tuple[torch.Tensor, int] | None]) -> dict[str, torch.Tensor]:
        values = [v if v is None or isinstance(v, tuple) else (v, v.shape[0]) for v in values]
        real = [v for v, _ in (x for x in values if x is not None)]
        tail = real[0].shape[1:] if real else self._placeholder_tail()
        frames = max([self.min_frames, *(v.shape[0] for v in real)])
        if self.pad_to is not None:
            frames = self.pad_to
        audio = torch.zeros(len(values), frames, *tail)
        mask = torch.zeros(len(values), frames, dtype=torch.bool)
        for i, item in enumerate(values):
            if item is not None:
                v, n_real = item
                n = min(v.shape[0], frames)
                audio[i, :n] = v[:n]
                mask[i, : min(n_real, n)] = True
        return {"audio": audio, "audio_mask": mask}

    def _placeholder_tail(self) -> tuple[int, ...]:
        if self.features is None:
            return ()
        out = self.features(torch.zeros(int(0.025 * self.sample_rate)))
        return tuple((out[0] if isinstance(out, tuple) else out).shape[1:])
