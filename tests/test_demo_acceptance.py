"""The demo's promise, on the real default run: fusion >= 0.90 test accuracy, each modality alone <= 0.65."""

from __future__ import annotations

import pytest

from mmfuse.config import resolve
from mmfuse.finetune import finetune


@pytest.mark.slow
def test_fusion_beats_each_modality_alone_on_the_demo(tmp_path):
    results = {}
    for modalities in ("text,image", "text", "image"):
        config = resolve({"model": {"modalities": modalities}, "train": {"progress": False},
                          "out": str(tmp_path / modalities.replace(",", "-"))})
        results[modalities] = finetune(config, echo=lambda *_: None)["test"]["accuracy"]
    assert results["text,image"] >= 0.90, results
    assert results["text"] <= 0.65 and results["image"] <= 0.65, results
