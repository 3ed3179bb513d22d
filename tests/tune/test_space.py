"""The search space of `mmfuse tune`: space files, key checks, the default space around a base config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from mmfuse.cli import main
from mmfuse.config import load_yaml, merge, resolve
from mmfuse.errors import ConfigError
from mmfuse.fusion import list_fusions
from mmfuse.tune import Param, default_space, load_space, parse_param
from mmfuse.tune.space import check_key, dotted, nested
from mmfuse.tune.study import check_space


def keys(space: list[Param]) -> list[str]:
    return [p.key for p in space]


def test_a_space_file_parses_each_type(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
                    "train.epochs: {type: int, low: 1, high: 4}\n"
                    "model.fusion: {type: categorical, choices: [gated, lmf]}\n"
                    "model.fusion_kwargs.rank: {type: int, low: 2, high: 8, step: 2}\n")
    lr, epochs, fusion, rank = load_space(path)
    assert (lr.type, lr.low, lr.high, lr.log) == ("float", 1e-4, 1e-2, True)
    assert (epochs.type, epochs.low, epochs.high) == ("int", 1, 4) and rank.step == 2
    assert fusion.choices == ("gated", "lmf") and fusion.contains("lmf") and not fusion.contains("concat-mlp")
    assert lr.contains(1e-3) and not lr.contains(1.0) and not epochs.contains(2.5)


@pytest.mark.parametrize("key, spec, message", [
    ("train.lrr", {"type": "float", "low": 0.1, "high": 1}, "unknown config key 'train.lrr' (did you mean 'lr'?)"),
    ("modle.dim", {"type": "int", "low": 8, "high": 16}, "unknown config key 'modle.dim'"),
    ("train.lr.peak", {"type": "float", "low": 0.1, "high": 1}, "'train.lr.peak': train.lr has no sub-keys"),
    ("train", {"type": "float", "low": 0.1, "high": 1}, "'train' is a section"),
    ("train.lr", {"type": "normal"}, "train.lr: type must be one of float, int, categorical"),
    ("train.lr", {"type": "float", "low": 1, "high": 0.1}, "train.lr: low must be below high"),
    ("train.lr", {"type": "float", "low": 0, "high": 1, "log": True}, "a log scale needs low > 0"),
    ("train.lr", {"type": "float", "lo": 0, "high": 1}, "unknown field 'lo' (did you mean 'low'?)"),
    ("model.dim", {"type": "int", "low": 8.5, "high": 16}, "low of an int must be a whole number"),
    ("model.fusion", {"type": "categorical", "choices": []}, "a non-empty list of choices"),
    ("model.fusion", "gated", "must be a mapping"),
])
def test_bad_space_entries_name_the_key(key, spec, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        parse_param(key, spec)
    assert "\n" not in str(err.value)


def test_keys_inside_mapping_fields_are_accepted():
    for key in ("model.fusion_kwargs.rank", "train.tower_lr.text", "model.encoders.text.kwargs.width",
                "model.encoders.text.name"):
        check_key(key)
    with pytest.raises(ConfigError, match="model.encoders.text.kwarg"):
        check_key("model.encoders.text.kwarg")


def test_the_cli_refuses_a_bad_space_key_in_one_line(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2}}))
    assert main(["tune", "--out", str(tmp_path / "study"), "--space", str(space), "--trials", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown config key 'train.learning_rate'" in err and str(space) in err
    assert not (tmp_path / "study" / "study.db").exists()


def test_a_value_the_config_refuses_is_named_before_any_trial():
    with pytest.raises(ConfigError, match=r"search space model.dropout=1.5: model.dropout is a probability"):
        check_space({}, [Param("model.dropout", "float", 0.0, 1.5)])
    with pytest.raises(ConfigError, match=r"search space model.fusion='sum'"):
        check_space({}, [Param("model.fusion", "categorical", choices=("gated", "sum"))])


def test_default_space_around_the_demo_config_holds_its_values():
    config = resolve({})
    space = default_space(config)
    assert keys(space) == ["model.fusion", "model.dim", "model.dropout", "train.lr", "train.weight_decay",
                           "train.epochs"]  # no encoder_lr: the demo's random-init towers learn at lr
    assert set(space[0].choices) == set(list_fusions())
    assert space[3].log
    values = config.to_dict()
    for p in space:
        assert p.contains(dotted(values, p.key)), p.key
    check_space({}, space)


BERT = {"model": {"encoders": {"text": {"name": "hf-text:bert-base-uncased"}}}}  # a pretrained tower (not built)


def test_a_pretrained_tower_adds_encoder_lr_and_under_lp_ft_probe_epochs():
    config = resolve(BERT)
    space = {p.key: p for p in default_space(config)}
    assert space["train.encoder_lr"].log and space["train.encoder_lr"].contains(config.train.lr / 20)
    assert space["train.probe_epochs"].contains(config.train.probe_epochs)  # auto resolves to lp-ft
    space = keys(default_space(resolve(merge(BERT, {"train": {"recipe": "full"}}))))
    assert "train.encoder_lr" in space and "train.probe_epochs" not in space
    check_space(BERT, default_space(config))


@pytest.mark.parametrize("layer, absent", [
    (merge(BERT, {"train": {"freeze": ["text"]}}), "train.encoder_lr"),  # the pretrained tower is frozen
    (merge(BERT, {"train": {"freeze": ["text"]}}), "train.probe_epochs"),  # auto: full, no probe
    (merge(BERT, {"train": {"recipe": "frozen"}}), "train.encoder_lr"),  # frozen recipe: pretrained towers frozen
    ({"model": {"task": "contrastive"}}, "model.fusion"),  # no head on the fused embedding
    ({"model": {"modalities": ["text"]}}, "model.fusion"),  # nothing to fuse
    ({"model": {"fusion": "lmf", "fusion_kwargs": {"rank": 4}}}, "model.fusion"),  # options of one fusion
    ({"train": {"epochs": 1}}, "train.epochs"),
])
def test_default_space_leaves_out_what_the_base_config_fixes(layer, absent):
    assert absent not in keys(default_space(resolve(layer)))
    assert "train.lr" in keys(default_space(resolve(layer)))


def test_a_frozen_pretrained_tower_with_trained_top_layers_still_searches_encoder_lr():
    space = default_space(resolve(merge(BERT, {"train": {"freeze": ["text"], "unfreeze_top": 1}})))
    assert "train.encoder_lr" in keys(space)


def test_print_space_writes_a_space_file_that_loads_back(tmp_path, capsys):
    assert main(["tune", "--print-space", "--set", "train.epochs=4"]) == 0
    path = tmp_path / "space.yaml"
    path.write_text(capsys.readouterr().out)
    assert load_space(path) == default_space(resolve({"train": {"epochs": 4}}))
    assert main(["tune", "--trials", "2"]) == 2 and "needs --out DIR" in capsys.readouterr().err


def test_nested_and_dotted():
    layer = nested({"train.lr": 0.1, "train.epochs": 2, "model.fusion_kwargs.rank": 4})
    assert layer == {"train": {"lr": 0.1, "epochs": 2}, "model": {"fusion_kwargs": {"rank": 4}}}
    assert dotted(layer, "model.fusion_kwargs.rank") == 4 and dotted(layer, "data.path") is None


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "configs" / "spaces").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_space_files_fit_the_demo_config(path):
    base = load_yaml(Path(__file__).parents[2] / "configs" / "demo.yaml")
    check_space(base, load_space(path))
