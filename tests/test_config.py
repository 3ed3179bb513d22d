from __future__ import annotations

from pathlib import Path

import pytest

from mmfuse.config import RunConfig, load_yaml, resolve, set_dotted
from mmfuse.errors import ConfigError
from mmfuse.model import build_encoder

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_defaults_are_the_demo_run():
    cfg = resolve()
    assert cfg.model.modalities == ["text", "image"] and cfg.model.fusion == "concat-mlp"
    assert cfg.data.path is None and cfg.model.encoders["text"].name == "tiny-text"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    cfg = resolve(load_yaml(path))
    assert isinstance(cfg, RunConfig)
    for m in cfg.model.modalities:
        assert m in cfg.model.encoders


def test_demo_config_equals_the_defaults():
    assert resolve(load_yaml(Path(__file__).parent.parent / "configs" / "demo.yaml")).to_dict() == resolve().to_dict()


def test_unknown_key_is_named_with_its_path_and_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.lrr' \(did you mean 'lr'\?\)"):
        resolve({"train": {"lrr": 1e-3}})
    with pytest.raises(ConfigError, match="unknown config key 'model.encoders.text.nam'"):
        resolve({"model": {"encoders": {"text": {"nam": "x"}}}})


def test_types_are_checked_and_yaml_numbers_coerced():
    assert resolve({"train": {"lr": "3e-4"}}).train.lr == 3e-4
    with pytest.raises(ConfigError, match="train.epochs must be an integer, got 'many'"):
        resolve({"train": {"epochs": "many"}})
    with pytest.raises(ConfigError, match="train.precision must be one of"):
        resolve({"train": {"precision": "fp8"}})


def test_unknown_modality():
    with pytest.raises(ConfigError, match="unknown modality 'video'"):
        resolve({"model": {"modalities": "text,video"}})


def test_set_dotted_and_precedence():
    layer: dict = {}
    set_dotted(layer, "train.weight_decay=0.2")
    set_dotted(layer, "model.fusion=gated")
    cfg = resolve({"train": {"weight_decay": 0.1}}, layer)
    assert cfg.train.weight_decay == 0.2 and cfg.model.fusion == "gated"
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        set_dotted(layer, "train.lr")


def test_bad_yaml_file(tmp_path):
    (tmp_path / "x.yaml").write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(tmp_path / "x.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")


def test_naming_an_encoder_replaces_its_options():
    cfg = resolve({"model": {"encoders": {"text": {"name": "hf-text:bert-base-uncased"}}}})
    assert cfg.model.encoders["text"].kwargs == {}
    assert cfg.model.encoders["image"].kwargs["width"] == 64  # the other tower keeps its options


def test_an_option_the_encoder_does_not_take_is_a_config_error():
    cfg = resolve({"model": {"encoders": {"text": {"name": "tiny-text", "kwargs": {"widht": 8}}}}})
    with pytest.raises(ConfigError, match="encoder 'tiny-text'.*widht"):
        build_encoder(cfg.model.encoders["text"])
