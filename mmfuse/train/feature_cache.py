"""Frozen-encoder feature cache: encode a frozen tower's inputs once, then train only fusion and head on them.

A tower whose encoder has no trainable parameter (`train.freeze` without `unfreeze_top`, no adapters) always gives
the same output for the same input: the model keeps frozen towers in eval mode (`FusionModel.train`). So each
split is encoded once per cached modality (eval mode, no grad, the run's autocast) and kept packed per split:

    pooled   (N, W)       one row per sample key
    present  (N,)  bool   the sample has this modality (else the row is the encoder's placeholder output)
    tokens   (sum n_i, W) each sample's tokens up to its last real one (only when the fusion reads tokens)
    mask     (sum n_i,)   bool, and offsets (N + 1,) int64 into tokens / mask

Two stages then stand in for the tower, and nothing else knows of the cache:

- in the loader, a `KeyLookup` per cached modality (`source(split)`, the `make_loader` arguments of a split) looks
  each sample's presence up by key instead of decoding its media: the batch has only `present_<m>` for it. When
  every tower is cached the tar files are not even read again: each split's keys, labels and presence are decoded
  once from a per-shard index (`index_split`) and its epochs are served from memory (`mmfuse.data.memory`) in the
  order the pipeline would give them.
- in the model, a `CachedEncoder` replaces the tower's encoder for the run (`install(model)`): its `forward(batch)`
  returns the rows of (`batch['split']`, `batch['key']`), padded as the encoder would, so `FusionModel` runs as it
  always does. It presents the real encoder's parameters, buffers and submodules as its own (the same dicts, not
  copies): parameter names (`encoders.<m>.*`), state dicts, checkpoints, DDP and FSDP see the real weights, so
  the swap may come after the trainer wrapped the model, and a checkpoint of a cached run loads anywhere.

With `train.cache_dir` the packed features are also written as safetensors files named by a fingerprint of the
encoder weights, its spec (preprocessing), the split's shard checksums and labels from dataset.json and the
precision: a run with the same frozen tower on the same data reuses them, a changed encoder or shard misses.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from ..data.batch import batch_size as count
from ..data.batch import to_device
from ..data.cached import KeyLookup, index_split
from ..data.info import DatasetInfo
from ..data.loader import make_loader
from ..data.memory import MemorySplit
from ..encoders.base import Encoder, EncoderOutput
from ..fingerprint import weights_fingerprint
from ..model import EncoderSpec, FusionModel
from ..outputs import atomic_file
from ..precision import autocast, tower_autocast
from .distributed import DistEnv, barrier

FORMAT = "mmfuse-features/1"


@dataclass
class SplitFeatures:
    """One modality's cached encoder outputs for one split, packed (see the module docstring)."""

    keys: list[str]
    pooled: torch.Tensor
    present: torch.Tensor
    tokens: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    offsets: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.index = {key: i for i, key in enumerate(self.keys)}

    def output(self, keys: list[str]) -> EncoderOutput:
        """The encoder output of `keys` (CPU): pooled (B, W), tokens (B, T, W) and mask (B, T), tokens padded to
        the longest (at least 1)."""
        rows = torch.tensor([self.index[k] for k in keys], dtype=torch.long)
        pooled = self.pooled[rows]  # (B, W)
        if self.tokens is None:  # a pooled-only fusion never reads tokens: one masked zero token
            tokens = pooled.new_zeros(len(keys), 1, pooled.shape[1])
            mask = torch.zeros(len(keys), 1, dtype=torch.bool)
        else:
            starts = self.offsets[rows]  # (B,)
            lengths = self.offsets[rows + 1] - starts  # (B,)
            longest = max(1, int(lengths.max())) if len(keys) else 1
            steps = torch.arange(longest)
            real = steps < lengths[:, None]  # (B, T): the positions a sample's stored tokens fill
            source = (starts[:, None] + steps)[real]  # their rows in the packed tokens, sample by sample
            tokens = self.tokens.new_zeros(len(keys), longest, self.tokens.shape[1])  # (B, T, W)
            tokens[real] = self.tokens[source]
            mask = torch.zeros(len(keys), longest, dtype=torch.bool)
            mask[real] = self.mask[source]
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pooled)

    def lookup(self, modality: str) -> KeyLookup:
        """The loader stage of this split's `modality`: presence by key."""
        return KeyLookup(modality, dict(zip(self.keys, self.present.tolist(), strict=True)))

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"pooled": self.pooled, "present": self.present}
        if self.tokens is not None:
            out.update(tokens=self.tokens, mask=self.mask, offsets=self.offsets)
        return {k: v.contiguous() for k, v in out.items()}


class CachedEncoder(nn.Module):
    """A frozen encoder's stand-in for a run: `forward(batch)` returns the cached outputs of the batch's samples,
    looked up by `batch['split']` and `batch['key']` in `splits` ({split: `SplitFeatures`}, filled as splits are
    prepared), on the device of `batch['present_<m>']`.

    It shares the real `encoder`'s parameter, buffer and submodule dicts (see the module docstring), and answers
    `modality`, `width`, `preprocessor` and `save_assets` as it does; `encoder` is the real one (not a submodule).
    """

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        # the same dicts, not copies: state_dict, named_parameters, .to() and load_state_dict reach the real tensors
        # under the real names
        self.__dict__.update(_parameters=encoder._parameters, _buffers=encoder._buffers, _modules=encoder._modules,
                             _non_persistent_buffers_set=encoder._non_persistent_buffers_set, encoder=encoder)
        self.modality, self.width, self.preprocessor = encoder.modality, encoder.width, encoder.preprocessor
        self.pretrained = encoder.pretrained
        self.training = encoder.training
        self.splits: dict[str, SplitFeatures] = {}

    @torch.compiler.disable  # per-key Python lookups: a compiled model calls it eagerly
    def forward(self, batch: dict[str, Any]) -> EncoderOutput:
        split = batch.get("split")
        if split not in self.splits:
            raise KeyError(f"the {self.modality} features of split '{split}' are not cached (batches of a cached "
                           f"run come from a loader built with FeatureCache.source(split))")
        out = self.splits[split].output(batch["key"])
        device = batch[f"present_{self.modality}"].device
        return EncoderOutput(*(t.to(device, non_blocking=True) for t in (out.tokens, out.mask, out.pooled)))

    def train(self, mode: bool = True) -> CachedEncoder:
        super().train(mode)
        self.encoder.training = mode  # the real encoder's submodules just followed; so does its own flag
        return self

    def save_assets(self, directory: str) -> dict[str, Any]:
        return self.encoder.save_assets(directory)


def fingerprint(weights: str, spec: EncoderSpec, info: DatasetInfo, split: str, modality: str, precision: str,
                tokens: bool) -> str:
    """What the cached features of (`modality`, `split`) depend on, hashed."""
    described = {"format": FORMAT, "weights": weights, "spec": asdict(spec), "modality": modality, "split": split,
                 "shards": info.require_split(split)["shards"], "extensions": info.modalities[modality],
                 "labels": info.labels, "label_field": info.label_field, "label_encoding": info.label_encoding,
                 "precision": precision, "tokens": tokens}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def encode_split(encoder: Encoder, info: DatasetInfo, split: str, batch_size: int, device: torch.device,
                 precision: str, tokens: bool, **loader_kwargs: Any) -> SplitFeatures:
    """Run a frozen `encoder` once over `split` (eval mode, no grad) and pack its outputs by sample key."""
    m = encoder.modality
    training = encoder.training
    encoder.eval()
    keys, pooled, present, toks, masks, lengths = [], [], [], [], [], [0]
    # every rank encodes the whole split: its shards change from epoch to epoch
    loader_kwargs = {"pin_memory": device.type == "cuda", **loader_kwargs}  # to_device copies without blocking
    loader = make_loader(info, split, {m: encoder.preprocessor}, batch_size, every_rank=True, **loader_kwargs)
    try:
        with torch.no_grad(), autocast(device, precision), tower_autocast(encoder):
            for batch in loader:
                if not count(batch):
                    continue
                out = encoder(to_device(batch, device))
                keys += batch["key"]
                pooled.append(out.pooled.cpu())
                present.append(batch[f"present_{m}"])
                if tokens:
                    mask = out.mask.cpu()
                    for i in range(mask.shape[0]):
                        real = mask[i].nonzero()
                        n = int(real.max()) + 1 if len(real) else 0
                        toks.append(out.tokens[i, :n].cpu())
                        masks.append(mask[i, :n])
                        lengths.append(n)
    finally:
        encoder.train(training)
    width = encoder.width
    features = SplitFeatures(keys, torch.cat(pooled) if pooled else torch.zeros(0, width),
                             torch.cat(present) if present else torch.zeros(0, dtype=torch.bool))
    if tokens:
        features.tokens = torch.cat(toks) if toks else torch.zeros(0, width)
        features.mask = torch.cat(masks) if masks else torch.zeros(0, dtype=torch.bool)
        features.offsets = torch.tensor(lengths, dtype=torch.long).cumsum(0)
    return features


def save_features(features: SplitFeatures, path: Path, digest: str) -> None:
    """Write packed features as safetensors (keys and fingerprint in its metadata), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        safetensors.torch.save_file(features.tensors(), str(tmp), metadata={
            "format": FORMAT, "fingerprint": digest, "keys": json.dumps(features.keys)})


def load_features(path: Path, digest: str) -> SplitFeatures | None:
    """The features stored at `path` if it exists and carries `digest`, else None."""
    if not path.exists():
        return None
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT or meta.get("fingerprint") != digest:
            return None
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    return SplitFeatures(json.loads(meta["keys"]), tensors["pooled"], tensors["present"].bool(),
                         tensors.get("tokens"), tensors.get("mask"), tensors.get("offsets"))


class FeatureCache:
    """Cached outputs of a model's frozen towers, built per split on first use (see the module docstring).

    `source(split)`: the `make_loader` arguments of a split (its `KeyLookup`s, and the replayed index when every
    tower is cached); `install(model)`: the frozen towers' `CachedEncoder`s in place of their encoders.
    """

    def __init__(self, model: FusionModel, specs: dict[str, EncoderSpec], info: DatasetInfo, device: torch.device,
                 precision: str, batch_size: int, directory: str | Path | None = None, env: DistEnv | None = None,
                 echo: Callable[[str], Any] = print, **loader_kwargs: Any) -> None:
        self.specs, self.info = specs, info
        self.device, self.precision, self.batch_size = device, precision, batch_size
        self.directory = Path(directory) if directory else None
        self.env = env or DistEnv(device=device)
        self.echo, self.loader_kwargs = echo, loader_kwargs
        self.tokens = model.fusion.uses_tokens
        self.towers = model.frozen_towers()
        real = {m: model.encoders[m] for m in self.towers}
        real = {m: e.encoder if isinstance(e, CachedEncoder) else e for m, e in real.items()}
        self.encoders = {m: CachedEncoder(e) for m, e in real.items()}
        self.weights = {m: weights_fingerprint(e) for m, e in real.items()}
        self.splits: dict[tuple[str, str], SplitFeatures] = {}
        self.lookups: dict[tuple[str, str], KeyLookup] = {}
        self.indexes: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.memory: dict[str, MemorySplit] = {}
        self.all_cached = set(self.towers) == set(model.modalities)

    in_memory: bool = True
    """Serve a split whose every modality is cached from memory (`MemorySplit`: same batches, same order) instead
    of replaying its index through the webdataset pipeline; the replay is kept for tests and benchmarks."""

    def prepare(self, split: str) -> None:
        """Encode (or load) every cached tower's features of `split` unless already held."""
        for m in self.towers:
            if (m, split) not in self.splits:
                features = self._features(m, split)
                self.splits[(m, split)] = self.encoders[m].splits[split] = features
                self.lookups[(m, split)] = features.lookup(m)
        if self.all_cached and split not in self.indexes:
            self.indexes[split] = index_split(self.info, split)
            self.memory[split] = MemorySplit(self.info, split, self.indexes[split])

    def source(self, split: str) -> dict[str, Any]:
        """The `make_loader` arguments that read `split` with its cached modalities looked up by key (`lookups`)
        and, when every modality is cached, the sample index that replaces the tar files (`index`) and the split's
        samples in memory (`memory`, unless `in_memory` is off). Encodes the split's features on first use."""
        self.prepare(split)
        lookups = {m: self.lookups[(m, split)] for m in self.towers}
        if not self.all_cached:
            return {"lookups": lookups}
        memory = {"memory": self.memory[split]} if self.in_memory else {}
        return {"lookups": lookups, "index": self.indexes[split], **memory}

    def install(self, model: FusionModel) -> None:
        """Replace each cached tower's encoder in `model` by its `CachedEncoder` (parameter names unchanged)."""
        for m, cached in self.encoders.items():
            model.encoders[m] = cached

    def uninstall(self, model: FusionModel) -> None:
        """Put the real encoders back into `model`."""
        for m, cached in self.encoders.items():
            model.encoders[m] = cached.encoder

    def _features(self, m: str, split: str) -> SplitFeatures:
        digest = fingerprint(self.weights[m], self.specs[m], self.info, split, m, self.precision, self.tokens)
        path = self.directory / f"{m}-{split}-{digest[:24]}.safetensors" if self.directory else None
        if path is not None and self.env.distributed:  # rank 0 writes, the others read its file
            if self.env.is_main and load_features(path, digest) is None:
                self._encode(m, split, path, digest)
            barrier(self.env)
        cached = load_features(path, digest) if path is not None else None
        if cached is not None:
            self.echo(f"mmfuse: frozen {m} features of '{split}' read from {path}")
            return cached
        return self._encode(m, split, path, digest)

    def _encode(self, m: str, split: str, path: Path | None, digest: str) -> SplitFeatures:
        tick = time.perf_counter()
        features = encode_split(self.encoders[m].encoder, self.info, split, self.batch_size, self.device,
                                self.precision, self.tokens, **self.loader_kwargs)
        if path is not None:
            save_features(features, path, digest)
        self.echo(f"mmfuse: cached frozen {m} features of '{split}' ({len(features.keys)} samples, "
                  f"{time.perf_counter() - tick:.1f}s){f' -> {path}' if path else ''}")
        return features
