"""Random-init audio towers with the inductive bias of small data: fixed log-mel features, few parameters.

A spectrogram transformer trained from scratch on a few thousand clips memorises them; word- or sound-level classes
are often told apart by simple statistics of the log-mel spectrum, which these towers start from:

- `logmel-stats`: per-frame [log-mel ; delta ; MFCC] -> their mean and standard deviation over the real frames ->
  a running standardisation -> a small MLP (pooled). Tokens are the per-frame features projected to the width and
  averaged over `token_stride` frames, so token-level fusions still work.
- `small-cnn-audio`: a few conv blocks (3x3 conv, masked GroupNorm, ReLU, 2x2 max-pool) over the (mel x time)
  image; tokens are the time steps after the convolutions, pooled their masked mean and max.

Both take the batch entries of `audio_io.AudioPreprocessor` with Kaldi log-mel frames: `audio` (B, F, n_mels),
`audio_mask` (B, F). Padding frames change nothing (a clip gets the same encoding alone or padded in a batch) and an
absent clip (no real frame) gets a finite placeholder, masked out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .audio_io import AudioPreprocessor, LogMelFrames
from .base import Encoder, EncoderOutput, masked_mean
from .registry import register_encoder


def masked_delta(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Central time difference, the clip's edge frames repeated (padding never read).

    Inputs: frames (B, F, C), mask (B, F). Returns: (B, F, C), zero on padding frames.
    """
    real = mask.unsqueeze(-1)  # (B, F, 1)
    nxt = torch.cat([frames[:, 1:], frames[:, -1:]], dim=1)
    nxt_real = torch.cat([real[:, 1:], torch.zeros_like(real[:, :1])], dim=1)
    prv = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    prv_real = torch.cat([torch.zeros_like(real[:, :1]), real[:, :-1]], dim=1)
    delta = (torch.where(nxt_real, nxt, frames) - torch.where(prv_real, prv, frames)) / 2
    return torch.where(real, delta, torch.zeros_like(delta))


def masked_std(frames: torch.Tensor, mask: torch.Tensor, mean: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Standard deviation over real frames. Inputs: frames (B, F, C), mask (B, F), mean (B, C). Returns: (B, C)."""
    return (masked_mean((frames - mean.unsqueeze(1)).square(), mask) + eps).sqrt()


def masked_max(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over real frames (0 for a clip without any). Inputs: frames (B, F, C), mask (B, F). Returns: (B, C)."""
    filled = frames.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
    return torch.where(mask.any(1, keepdim=True), filled, torch.zeros_like(filled))


def window_mean(tokens: torch.Tensor, mask: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked mean over windows of `stride` frames. Inputs: tokens (B, F, D), mask (B, F).
    Returns: tokens (B, ceil(F / stride), D), mask (B, ceil(F / stride)) True where a window holds a real frame."""
    if stride == 1:
        return tokens, mask
    B, n, D = tokens.shape
    pad = -n % stride
    tokens, mask = F.pad(tokens, (0, 0, 0, pad)), F.pad(mask, (0, pad))
    weights = mask.view(B, -1, stride, 1).to(tokens.dtype)  # (B, W, S, 1)
    summed = (tokens.view(B, -1, stride, D) * weights).sum(2)
    return summed / weights.sum(2).clamp_min(1.0), mask.view(B, -1, stride).any(-1)


def dct_matrix(n_mels: int, n_mfcc: int) -> torch.Tensor:
    """Orthonormal DCT-II basis (n_mels, n_mfcc): log-mel frames @ it = MFCCs."""
    m = torch.arange(n_mels, dtype=torch.float64).unsqueeze(1)
    k = torch.arange(n_mfcc, dtype=torch.float64).unsqueeze(0)
    basis = torch.cos(math.pi / n_mels * (m + 0.5) * k) * math.sqrt(2.0 / n_mels)
    basis[:, 0] /= math.sqrt(2.0)
    return basis.float()


class RunningStandardize(nn.Module):
    """(x - mean) / std with statistics estimated in training, like BatchNorm's running estimates but used in
    training too, so an output never depends on the other samples of its batch (a batch of one is fine).

    The estimates are the cumulative average of the batch statistics for the first `1 / momentum` training
    batches, then an exponential average with `momentum`. Only rows flagged in `rows` (clips with audio) count.
    Inputs: x (B, C), rows (B,) bool. Returns: (B, C).
    """

    def __init__(self, channels: int, momentum: float = 0.01, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("var", torch.ones(channels))
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.training:  # without a host sync: a batch with no row (or one) leaves the estimates (the spread) as is
            with torch.no_grad():
                w = rows.to(torch.float32).unsqueeze(-1)  # (B, 1)
                n = w.sum()
                mean = (x.detach().float() * w).sum(0) / n.clamp_min(1.0)
                var = ((x.detach().float() - mean).square() * w).sum(0) / n.clamp_min(1.0)
                rate = (1.0 / (self.batches + 1).float()).clamp_min(self.momentum)
                self.mean.lerp_(mean, rate * (n > 0))
                self.var.lerp_(var, rate * (n > 1))
                self.batches += (n > 0).long()
        return (x - self.mean) / (self.var + self.eps).sqrt()


class LogMelStatsEncoder(Encoder):
    """Statistics of per-frame log-mel features -> MLP.

    Inputs: batch["audio"] (B, F, M) log-mel frames, batch["audio_mask"] (B, F).
    Returns: tokens (B, ceil(F / token_stride), D) the projected frame features averaged over `token_stride` frames,
    mask (B, ceil(F / token_stride)), pooled (B, D) the MLP of [mean ; std] over time of [log-mel ; delta ; MFCC].
    """

    modality = "audio"
    family = "mlp"

    def __init__(self, width: int, hidden: int, layers: int, n_mels: int, n_mfcc: int, token_stride: int,
                 dropout: float, sample_rate: int, max_seconds: float) -> None:
        super().__init__()
        self.width, self.token_stride = width, token_stride
        self.preprocessor = AudioPreprocessor(sample_rate, max_seconds, LogMelFrames(sample_rate, n_mels))
        self.register_buffer("dct", dct_matrix(n_mels, n_mfcc), persistent=False)
        channels = 2 * n_mels + n_mfcc  # per frame: log-mel, delta, MFCC
        self.standardize = RunningStandardize(2 * channels)
        blocks: list[nn.Module] = []
        size = 2 * channels
        for _ in range(layers):
            blocks += [nn.Linear(size, hidden), nn.GELU(), nn.Dropout(dropout)]
            size = hidden
        self.mlp = nn.Sequential(*blocks, nn.Linear(size, width))
        self.frame_norm = nn.LayerNorm(channels)
        self.frame_proj = nn.Linear(channels, width)

    def frame_features(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Inputs: frames (B, F, M), mask (B, F). Returns: [log-mel ; delta ; MFCC] (B, F, 2M + K), 0 on padding."""
        frames = frames.masked_fill(~mask.unsqueeze(-1), 0.0)
        return torch.cat([frames, masked_delta(frames, mask), frames @ self.dct], dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        mask = batch["audio_mask"]  # (B, F)
        feats = self.frame_features(batch["audio"].float(), mask)  # (B, F, C)
        mean = masked_mean(feats, mask)  # (B, C)
        stats = torch.cat([mean, masked_std(feats, mask, mean)], dim=-1)  # (B, 2C)
        pooled = self.mlp(self.standardize(stats, mask.any(1)))  # (B, D)
        tokens = F.gelu(self.frame_proj(self.frame_norm(feats)))  # (B, F, D)
        tokens, token_mask = window_mean(tokens, mask, self.token_stride)
        return EncoderOutput(tokens=tokens, mask=token_mask, pooled=pooled)

    def lock(self, unlocked_layers: int = 0) -> None:
        """Freeze everything; `unlocked_layers` > 0 keeps the last linear layers of the MLP (and the token
        projection) trainable."""
        super().lock()
        if unlocked_layers:
            linears = [m for m in self.mlp if isinstance(m, nn.Linear)]
            for layer in linears[-unlocked_layers:]:
                layer.requires_grad_(True)
            self.frame_proj.requires_grad_(True)


class MaskedGroupNorm(nn.Module):
    """GroupNorm whose statistics cover only real time steps (padding neither counts nor changes a clip's output).

    Inputs: x (B, C, H, T), mask (B, T). Returns: (B, C, H, T).
    """

    def __init__(self, groups: int, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, C, H, T = x.shape
        xg = x.view(B, self.groups, C // self.groups, H, T)
        w = mask.view(B, 1, 1, 1, T).to(x.dtype)
        count = (w.sum((2, 3, 4), keepdim=True) * (C // self.groups * H)).clamp_min(1.0)  # (B, 1, 1, 1, 1)
        mean = (xg * w).sum((2, 3, 4), keepdim=True) / count
        var = ((xg - mean).square() * w).sum((2, 3, 4), keepdim=True) / count
        out = ((xg - mean) / (var + self.eps).sqrt()).view(B, C, H, T)
        return out * self.weight.view(1, C, 1, 1) + self.bias.view(1, C, 1, 1)


class ConvBlock(nn.Module):
    """3x3 conv -> masked GroupNorm -> ReLU -> padding zeroed -> 2x2 max-pool (ceil: a short tail is kept).

    Inputs: x (B, C_in, H, T), mask (B, T). Returns: x (B, C_out, ceil(H / 2), ceil(T / 2)), mask (B, ceil(T / 2)).
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm = MaskedGroupNorm(math.gcd(4, c_out), c_out)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.norm(self.conv(x), mask))
        x = x * mask.view(mask.shape[0], 1, 1, -1).to(x.dtype)  # padding is 0, as the conv's own zero padding
        x = F.max_pool2d(x, 2, ceil_mode=True)  # values >= 0: a zero padding step never wins a max
        mask = F.max_pool1d(mask.unsqueeze(1).float(), 2, ceil_mode=True).squeeze(1) > 0
        return x, mask


class SmallCNNAudioEncoder(Encoder):
    """A few conv blocks over the (mel x time) log-mel image.

    Inputs: batch["audio"] (B, F, M) log-mel frames, batch["audio_mask"] (B, F).
    Returns: tokens (B, ceil(F / 2^L), D) one per time step after L blocks (channels x remaining mel rows,
    projected), mask (B, ceil(F / 2^L)), pooled (B, D) from the masked mean and max of the tokens.
    """

    modality = "audio"
    family = "cnn"

    def __init__(self, width: int, layers: int, channels: int, n_mels: int, dropout: float, sample_rate: int,
                 max_seconds: float) -> None:
        super().__init__()
        self.width = width
        self.preprocessor = AudioPreprocessor(sample_rate, max_seconds, LogMelFrames(sample_rate, n_mels))
        sizes = [1] + [channels * 2 ** i for i in range(layers)]
        self.blocks = nn.ModuleList(ConvBlock(a, b) for a, b in zip(sizes, sizes[1:], strict=False))
        rows = n_mels
        for _ in range(layers):
            rows = math.ceil(rows / 2)
        self.token_proj = nn.Linear(sizes[-1] * rows, width)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * width, width))

    def forward(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        mask = batch["audio_mask"]  # (B, F)
        x = batch["audio"].float().masked_fill(~mask.unsqueeze(-1), 0.0).transpose(1, 2).unsqueeze(1)  # (B, 1, M, F)
        for block in self.blocks:
            x, mask = block(x, mask)  # (B, C, H, T)
        tokens = F.gelu(self.token_proj(x.permute(0, 3, 1, 2).flatten(2)))  # (B, T, D)
        pooled = self.head(torch.cat([masked_mean(tokens, mask), masked_max(tokens, mask)], dim=-1))  # (B, D)
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pooled)

    def lock(self, unlocked_layers: int = 0) -> None:
        """Freeze everything; `unlocked_layers` = k > 0 keeps the projection and head trainable, and the last k - 1
        conv blocks."""
        super().lock()
        if unlocked_layers:
            for block in list(self.blocks)[max(0, len(self.blocks) - unlocked_layers + 1):]:
                block.requires_grad_(True)
            self.token_proj.requires_grad_(True)
            self.head.requires_grad_(True)


def _check(name: str, **counts: int) -> None:
    for key, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name}: {key} must be an integer >= 1, got {value!r}")


@register_encoder("logmel-stats", random_init=True,
                  small_data_for=("tiny-audio", "timm-audio", "hf-audio"))
def logmel_stats(pretrained: bool = False, width: int = 128, hidden: int = 256, layers: int = 1, n_mels: int = 40,
                 n_mfcc: int = 13, token_stride: int = 4, dropout: float = 0.1, sample_rate: int = 16_000,
                 max_seconds: float = 10.0) -> LogMelStatsEncoder:
    """Mean / std over time of log-mel, deltas and MFCCs -> an MLP with `layers` hidden layers (random init)."""
    _check("logmel-stats", width=width, hidden=hidden, layers=layers, n_mels=n_mels, n_mfcc=n_mfcc,
           token_stride=token_stride)
    if n_mfcc > n_mels:
        raise ConfigError(f"logmel-stats: n_mfcc ({n_mfcc}) must be <= n_mels ({n_mels})")
    return LogMelStatsEncoder(width, hidden, layers, n_mels, n_mfcc, token_stride, dropout, sample_rate,
                              max_seconds)


@register_encoder("small-cnn-audio", random_init=True)
def small_cnn_audio(pretrained: bool = False, width: int = 128, layers: int = 3, channels: int = 16,
                    n_mels: int = 40, dropout: float = 0.1, sample_rate: int = 16_000,
                    max_seconds: float = 10.0) -> SmallCNNAudioEncoder:
    """`layers` conv blocks (`channels`, doubling per block) over the log-mel image (random init)."""
    _check("small-cnn-audio", width=width, layers=layers, channels=channels, n_mels=n_mels)
    return SmallCNNAudioEncoder(width, layers, channels, n_mels, dropout, sample_rate, max_seconds)
