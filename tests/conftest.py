"""Shared fixtures: a seed, tiny demo shards built in a temp dir, and a tiny run config. Nothing downloads."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from mmfuse.config import resolve  # noqa: E402
from mmfuse.data.demo import DemoSpec, build_demo  # noqa: E402

TINY_SPEC = DemoSpec(train=96, val=32, test=40, image_size=32, shard_size=32)
TINY_MODEL = {
    "dim": 32,
    "encoders": {
        "text": {"name": "tiny-text", "kwargs": {"width": 16, "layers": 1, "heads": 2}},
        "image": {"name": "tiny-image", "kwargs": {"width": 16, "layers": 1, "heads": 2, "image_size": 32}},
    },
}


NO_CUDA = "gpu test: needs CUDA, and torch.cuda.is_available() is False on this machine"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked `gpu` where CUDA is not available (run them with `-m gpu` on a GPU machine)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_CUDA)
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory: pytest.TempPathFactory):
    """A tiny demo dataset (96/32/40 samples, 32 px images, 32 samples per shard), built once per session."""
    return build_demo(tmp_path_factory.mktemp("data") / "demo", TINY_SPEC)


@pytest.fixture(scope="module")
def preprocessors() -> dict:
    """The tiny text and 32 px image encoders' preprocessors, as the loader tests feed them."""
    from mmfuse.encoders import create_encoder

    return {"text": create_encoder("tiny-text").preprocessor,
            "image": create_encoder("tiny-image", image_size=32).preprocessor}


@pytest.fixture
def tiny_layers(demo_shards, tmp_path) -> dict:
    """Config layers for a fast tiny run on `demo_shards`, writing into tmp_path/run."""
    return {
        "model": dict(TINY_MODEL),
        "data": {"path": str(demo_shards), "batch_size": 16, "eval_batch_size": 16},
        "train": {"epochs": 2, "lr": 3e-3, "progress": False, "log_every": 2},
        "out": str(tmp_path / "run"),
    }


@pytest.fixture
def tiny_config(tiny_layers):
    return resolve(tiny_layers)
