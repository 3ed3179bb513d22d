"""`register_encoder` / `create_encoder` / `list_encoders`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..registry import Registry
from .base import Encoder

ENCODERS: Registry[Encoder] = Registry("encoder")


def register_encoder(name: str) -> Callable[[Callable[..., Encoder]], Callable[..., Encoder]]:
    """Decorator: make an encoder class or builder available to `create_encoder(name)`."""
    return ENCODERS.register(name)


def create_encoder(name: str, pretrained: bool = True, **kwargs: Any) -> Encoder:
    """Build a registered encoder.

    `name` may carry the backbone after a colon, timm style: `create_encoder("hf-text:bert-base-uncased")` is
    `create_encoder("hf-text", model="bert-base-uncased")`. `pretrained=False` builds the architecture only.
    """
    name, implied = split_encoder_name(name)
    return ENCODERS.get(name)(pretrained=pretrained, **{**implied, **kwargs})


def list_encoders() -> list[str]:
    """Names of all registered encoders."""
    return ENCODERS.names()


def split_encoder_name(name: str) -> tuple[str, dict[str, Any]]:
    """'hf-text:bert-base-uncased' -> ('hf-text', {'model': 'bert-base-uncased'})."""
    if ":" in name:
        base, model = name.split(":", 1)
        return base, {"model": model}
    return name, {}
