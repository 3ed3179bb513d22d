"""The decode limit: a plain loop over the same tar members the loader reads, with no pipeline around it.

It does the loader's work with the fastest primitives called directly -- the direct tar parser
(`mmfuse.data.tario.iter_members`), `torchvision.io.decode_image`,
one batched tokenizer call, `torch.stack` -- and yields batches equal to the loader's (a test checks this), so
`mmfuse loader / raw loop` is the fraction of the decode limit the webdataset pipeline keeps.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..data.info import DatasetInfo
from ..data.tario import iter_members
from ..encoders.base import Preprocessor


def _samples(urls: list[str]) -> Iterator[dict[str, bytes]]:
    """Members grouped by sample key (the webdataset convention: key = path up to the first dot of the name)."""
    for url in urls:
        with open(url, "rb") as stream:
            current: dict[str, Any] = {}
            for name, data in iter_members(stream, url):
                base = name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                key = name[: len(name) - len(base)] + key
                if current and current["__key__"] != key:
                    yield current
                    current = {}
                current["__key__"] = key
                current[ext] = data
            if current:
                yield current


def _image(data: bytes | None, pre: Any) -> torch.Tensor | None:
    from torchvision.io import ImageReadMode, decode_image

    if data is None:
        return None
    image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB).float()
    if image.shape[-2:] != (pre.size, pre.size):
        image = F.interpolate(image[None], size=(pre.size, pre.size), mode="bilinear", antialias=True,
                              align_corners=False)[0]
    return (image - pre.mean) / pre.std


def _collate(chunk: list[dict[str, Any]], preprocessors: Mapping[str, Preprocessor]) -> dict[str, Any]:
    batch: dict[str, Any] = {"key": [s["key"] for s in chunk], "label": torch.tensor([s["label"] for s in chunk])}
    for m, pre in preprocessors.items():
        values = [s[m] for s in chunk]
        if m == "text":
            enc = pre.tokenizer([v or "" for v in values], padding="longest", truncation=True,
                                max_length=pre.max_length, return_tensors="pt")
            batch["text_ids"], batch["text_mask"] = enc["input_ids"], enc["attention_mask"].bool()
        elif m == "image":
            blank = torch.zeros(3, pre.size, pre.size)
            batch["image"] = torch.stack([v if v is not None else blank for v in values])
        else:  # a modality without a hand-written decoder: its own preprocessor's collate
            batch.update(pre.collate(values))
        batch[f"present_{m}"] = torch.tensor([v is not None for v in values], dtype=torch.bool)
    return batch


def raw_batches(info: DatasetInfo, split: str, preprocessors: Mapping[str, Preprocessor],
                batch_size: int) -> Iterator[dict[str, Any]]:
    """Batches of `split` decoded by the plain loop (same layout and values as the loader's, partial last batch)."""
    chunk: list[dict[str, Any]] = []
    for raw in _samples(info.shard_urls(split)):
        sample: dict[str, Any] = {"key": raw["__key__"], "label": int(raw[info.label_field])}
        for m, pre in preprocessors.items():
            data = next((raw[ext] for ext in info.modalities[m] if ext in raw), None)
            if m == "text":
                sample[m] = data.decode("utf-8").strip() or None if data is not None else None
            elif m == "image":
                sample[m] = _image(data, pre)
            else:
                sample[m] = pre.transform(data)
        chunk.append(sample)
        if len(chunk) == batch_size:
            yield _collate(chunk, preprocessors)
            chunk = []
    if chunk:
        yield _collate(chunk, preprocessors)
