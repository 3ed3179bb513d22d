from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mmfuse.config import load_yaml, resolve, set_dotted
from mmfuse.errors import ConfigError
from mmfuse.model import build_encoder

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_defaults_are_the_demo_run():
    cfg = resolve()
    assert cfg.model.modalities == ["text", "image"] and cfg.model.fusion == "concat-mlp"
    assert cfg.data.path is None and cfg.model.encoders["text"].name == "tiny-text"


DISTINCTIVE = {
    "bert-vit.yaml": {"model.fusion": "gated", "model.dim": 256, "model.encoders.text.name": "hf-text",
                      "model.encoders.image.name": "timm-image", "data.path": "data/my-shards", "data.batch_size": 32,
                      "train.epochs": 5, "train.lr": 1e-3, "train.encoder_lr": 3e-5, "train.warmup": 0.1},
    "demo-contrastive.yaml": {"model.task": "contrastive", "model.contrastive_loss": "siglip",
                              "model.task_kwargs": {"ks": [1, 5, 10]}, "train.early_stopping_patience": 3,
                              "train.keep_best": 3, "model.fusion": "concat-mlp", "data.path": None},
    "demo-gated.yaml": {"model.fusion": "gated", "data.batch_size": 64, "train.epochs": 10, "model.task":
                        "classification", "model.encoders.text.name": "tiny-text"},
    "demo-interactions.yaml": {"model.task": "interactions", "model.task_kwargs": {"loss": "softmax",
                                                                                   "temperature": 0.1}},
    "minilm-effnet.yaml": {"model.fusion": "interact", "model.dim": 256, "model.encoders.text.name": "minilm-l6",
                           "model.encoders.image.name": "effnet-lite0", "model.encoders.image.kwargs.image_size": 128,
                           "data.path": "data/digit-match/shards", "data.batch_size": 32, "train.lr": 1e-3,
                           "train.encoder_lr": 1e-4},
    "demo.yaml": {"model.fusion": "concat-mlp", "model.dim": 128, "model.encoders.image.kwargs.image_size": 64,
                  "model.encoders.audio.kwargs.max_seconds": 1.0, "train.lr": 2e-3, "train.precision": "auto"},
}
"""What each shipped config is for, written out by hand (a new config must be added here)."""


def leaves(data: dict, prefix: str = "") -> dict:
    """{'section.key...': value} of every leaf of a nested mapping (a mapping under `*_kwargs` is one value)."""
    out = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and not str(key).endswith("kwargs"):
            out.update(leaves(value, f"{path}."))
        else:
            out[path] = value
    return out


def test_every_shipped_config_is_described():
    assert sorted(DISTINCTIVE) == [p.name for p in CONFIGS]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    """Every value the file sets is the resolved value (with its YAML type coerced to the field's), every other
    field keeps its default, and the config's distinctive settings are the ones written in DISTINCTIVE."""
    written = leaves(load_yaml(path))
    resolved = leaves(resolve(load_yaml(path)).to_dict())
    defaults = leaves(resolve().to_dict())
    for key, value in written.items():
        assert resolved[key] == value, key
        if isinstance(value, float):
            assert isinstance(resolved[key], float), key
    named = {k.rsplit(".", 2)[0] for k in written if k.startswith("model.encoders.") and k.endswith(".name")}
    for key, value in resolved.items():  # a tower the file names takes none of the default tower's options
        if key not in written and not any(key.startswith(f"{tower}.") for tower in named):
            assert value == defaults[key], key
    cfg = resolve(load_yaml(path))
    for key, value in DISTINCTIVE[path.name].items():
        node = cfg.to_dict()
        for part in key.split("."):
            node = node[part]
        assert node == value, key
    assert all(m in cfg.model.encoders for m in cfg.model.modalities)


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


def test_a_run_config_parses_without_importing_torch():
    code = ("import sys\nfrom mmfuse.config import resolve\n"
            "c = resolve({'model': {'fusion': 'gated', 'modalities': 'text,audio'}})\n"
            "assert c.model.fusion == 'gated' and c.model.modalities == ['text', 'audio']\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
