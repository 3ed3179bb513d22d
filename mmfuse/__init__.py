"""mmfuse: multimodal fusion -- text, image and audio encoders, fusion heads, joint fine-tuning.

The public API is imported lazily so `import mmfuse` stays light for services that only embed.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    "create_encoder": "mmfuse.encoders",
    "list_encoders": "mmfuse.encoders",
    "register_encoder": "mmfuse.encoders",
    "create_fusion": "mmfuse.fusion",
    "list_fusions": "mmfuse.fusion",
    "register_fusion": "mmfuse.fusion",
    "list_tasks": "mmfuse.tasks",
    "create_task": "mmfuse.tasks",
    "create_model_and_task": "mmfuse.tasks",
    "build_model": "mmfuse.model",
    "FusionModel": "mmfuse.model",
    "ModelConfig": "mmfuse.model_config",
    "EncoderSpec": "mmfuse.model_config",
    "RunConfig": "mmfuse.config",
    "finetune": "mmfuse.finetune",
    "load": "mmfuse.inference",
    "Embedder": "mmfuse.inference",
    "Predictor": "mmfuse.inference",
    "demo_dataset": "mmfuse.data.demo",
    "MmfuseError": "mmfuse.errors",
    "ConfigError": "mmfuse.errors",
    "DataError": "mmfuse.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'mmfuse' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
