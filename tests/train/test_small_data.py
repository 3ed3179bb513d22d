"""`train.recipe: auto` swaps a random-init tower for its registered small-data encoder on a small train split."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import yaml

import mmfuse
from mmfuse.cli import main
from mmfuse.config import load_yaml, resolve
from mmfuse.data.info import DatasetInfo
from mmfuse.data.loader import read_records
from mmfuse.encoders import create_encoder, list_encoders
from mmfuse.encoders.registry import RANDOM_INIT, SMALL_DATA, register_encoder, small_data_replacement
from mmfuse.encoders.small_audio import LogMelStatsEncoder
from mmfuse.errors import ConfigError
from mmfuse.finetune import finetune
from mmfuse.model_config import EncoderSpec
from mmfuse.train.recipe import apply_small_data, small_data_swaps
from mmfuse.train.trainer import Trainer

AUDIO = {"width": 16, "layers": 1, "heads": 2, "n_mels": 16, "patch_size": 8, "max_seconds": 1.0}
SWAPPED = "audio tower tiny-audio -> logmel-stats (random-init, 96 train items < 5,000)"


def audio_config(**train):
    model = {"modalities": ["text", "audio"], "dim": 16,
             "encoders": {"text": {"name": "tiny-text", "kwargs": {"width": 16, "layers": 1, "heads": 2}},
                          "audio": {"name": "tiny-audio", "kwargs": AUDIO}}}
    return resolve({"model": model, "train": train})


def test_auto_swaps_a_random_init_audio_tower_on_a_small_split_and_keeps_its_input_options():
    config = audio_config()
    (swap,) = small_data_swaps(config.train, config.model, 96)
    assert swap.describe() == SWAPPED
    model = apply_small_data(config.model, (swap,))
    assert model.encoders["audio"] == EncoderSpec("logmel-stats", {"width": 16, "n_mels": 16, "max_seconds": 1.0},
                                                  pretrained=False)
    assert model.encoders["text"] == config.model.encoders["text"]  # tiny-text has no small-data encoder
    assert apply_small_data(model, (swap,)) == model  # a resumed run's config is swapped already


@pytest.mark.parametrize("train, items", [({}, 5000), ({"small_data_items": 0}, 96), ({"recipe": "full"}, 96),
                                          ({"freeze": ["audio"]}, 96), ({"init_from": "runs/x"}, 96)])
def test_no_swap_on_a_large_split_an_explicit_recipe_a_frozen_tower_or_a_trained_run(train, items):
    config = audio_config(**train)
    assert small_data_swaps(config.train, config.model, items) == ()


def test_towers_holding_pretrained_weights_keep_their_encoder():
    config = audio_config()
    for spec in (EncoderSpec("timm-audio", {"n_mels": 16}), EncoderSpec("hf-audio", {"model": "x"}),
                 EncoderSpec("timm-audio", {"checkpoint": "w.safetensors"}, pretrained=False)):
        model = replace(config.model, encoders={**config.model.encoders, "audio": spec})
        assert small_data_swaps(config.train, model, 96) == ()
    random_vit = replace(config.model, encoders={**config.model.encoders,
                                                 "audio": EncoderSpec("timm-audio", {"n_mels": 64}, False)})
    (swap,) = small_data_swaps(config.train, random_vit, 96)
    assert (swap.replaced, swap.replacement) == ("timm-audio", "logmel-stats")


@pytest.mark.parametrize("name", list_encoders())
def test_every_small_data_replacement_is_random_init_and_builds(name):
    found = small_data_replacement(name, {}, pretrained=False)
    assert (found is not None) == (name in SMALL_DATA)
    if found is not None:
        assert found[0] in RANDOM_INIT and create_encoder(*found).pretrained is False
    assert small_data_replacement(name, {}, pretrained=True) is None or name in RANDOM_INIT


def test_only_a_random_init_encoder_may_replace_others():
    with pytest.raises(ValueError, match="only a random-init encoder"):
        register_encoder("pretrained-x", small_data_for=("tiny-audio",))
    with pytest.raises(ValueError, match="already has a small-data replacement 'logmel-stats'"):
        register_encoder("other-x", random_init=True, small_data_for=("tiny-audio",))


@pytest.mark.parametrize("value, message", [(-1, "train.small_data_items must be >= 0"),
                                            ("many", "train.small_data_items must be an integer")])
def test_threshold_is_validated(value, message):
    with pytest.raises(ConfigError, match=message):
        resolve({"train": {"small_data_items": value}})


def run_args(demo_shards, out, *extra: str) -> list[str]:
    kwargs = "{" + ", ".join(f"{k}: {v}" for k, v in AUDIO.items()) + "}"
    return ["finetune", "--data", str(demo_shards), "--modalities", "text,audio", "--out", str(out), "--epochs", "1",
            "--max-steps", "2", "--batch-size", "16", "--no-progress", "--precision", "fp32",
            "--set", "model.dim=16", "--set", "model.encoders.text.kwargs={width: 16, layers: 1, heads: 2}",
            "--set", f"model.encoders.audio.kwargs={kwargs}", *extra]


def test_run_prints_records_and_reloads_the_swapped_encoder(demo_shards, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(run_args(demo_shards, run)) == 0
    assert f"mmfuse: recipe full (auto: no tower holds pretrained weights): train 1 epochs; {SWAPPED}" \
        in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["recipe"]["small_data"] == [{"tower": "audio", "replaced": "tiny-audio",
                                                "replacement": "logmel-stats", "train_items": 96,
                                                "threshold": 5000}]
    saved = yaml.safe_load((run / "run_config.yaml").read_text())
    assert saved["model"]["encoders"]["audio"]["name"] == "logmel-stats"
    checkpoint = json.loads((run / "checkpoints" / "best" / "config.json").read_text())
    assert checkpoint["model"]["encoders"]["audio"]["name"] == "logmel-stats"
    predictor = mmfuse.load(run)  # what embed, evaluate and serving load
    assert isinstance(predictor.model.encoders["audio"], LogMelStatsEncoder)
    records = [r for r in read_records(DatasetInfo.load(demo_shards), "test") if "audio" in r][:4]
    assert predictor.embed(records).shape == (4, 16)


def test_explicit_recipe_full_keeps_the_named_tower(demo_shards, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(run_args(demo_shards, run, "--recipe", "full")) == 0
    assert "tiny-audio -> " not in capsys.readouterr().out
    saved = yaml.safe_load((run / "run_config.yaml").read_text())
    assert saved["model"]["encoders"]["audio"]["name"] == "tiny-audio"
    assert json.loads((run / "metrics.json").read_text())["recipe"]["small_data"] == []


def test_a_resumed_run_keeps_the_swapped_tower_and_its_record(demo_shards, tmp_path, monkeypatch):
    config = audio_config(epochs=2, checkpoint_every=2, progress=False)
    config = replace(config, data=replace(config.data, path=str(demo_shards), batch_size=16), out=str(tmp_path / "r"))
    original = Trainer.train_step

    def crashing_step(self, batch):  # kill -9 at the 4th micro-step, after the resumable checkpoint of step 2
        if self.micro_step + 1 == 4:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        finetune(config, echo=lambda *_: None)
    monkeypatch.setattr(Trainer, "train_step", original)
    saved = resolve(load_yaml(tmp_path / "r" / "run_config.yaml"), {"out": str(tmp_path / "r")})  # as --resume
    assert saved.model.encoders["audio"].name == "logmel-stats"
    lines = []
    metrics = finetune(saved, echo=lines.append, resume=True)
    assert [s["replaced"] for s in metrics["recipe"]["small_data"]] == ["tiny-audio"]
    assert any(SWAPPED in line for line in lines) and metrics["steps"] == 12
