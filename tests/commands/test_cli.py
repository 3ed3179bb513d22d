"""The CLI end to end: fine-tune a tiny model for a few steps, check what it wrote, reload it, and bad input."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml

import mmfuse
from mmfuse.cli import main
from mmfuse.commands import COMMANDS
from mmfuse.data.info import DatasetInfo
from mmfuse.data.loader import read_records
from mmfuse.errors import DataError

TINY_FLAGS = ["--set", "model.dim=32", "--set", "model.encoders.text.kwargs.width=16",
              "--set", "model.encoders.image.kwargs.width=16", "--set", "model.encoders.image.kwargs.image_size=32",
              "--set", "train.log_every=2", "--batch-size", "16", "--no-progress"]


def finetune(demo_shards, out, *extra: str) -> int:
    return main(["finetune", "--data", str(demo_shards), "--out", str(out), "--epochs", "2", *TINY_FLAGS, *extra])


def test_finetune_writes_run_and_load_reproduces_test_accuracy(demo_shards, tmp_path, capsys):
    assert finetune(demo_shards, tmp_path / "run") == 0
    printed = capsys.readouterr().out
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    best, acc = metrics["best_epoch"], metrics["test"]["accuracy"]
    assert f"test accuracy (text+image, best epoch {best}): {acc:.4f}" in printed
    assert metrics["test"]["count"] == 40 and metrics["skipped_total"] == 0
    assert [e["train_samples"] for e in metrics["epochs"]] == [96, 96]
    for ckpt in ("best", "last"):
        assert (run / "checkpoints" / ckpt / "model.safetensors").exists()
        assert (run / "checkpoints" / ckpt / "config.json").exists()
    resolved = yaml.safe_load((run / "run_config.yaml").read_text())
    assert resolved["model"]["dim"] == 32 and resolved["data"]["path"] == str(demo_shards)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if "val_accuracy" in r] == [1, 2]
    assert any("loss" in r and "step" in r for r in lines)

    predictor = mmfuse.load(run)
    records = list(read_records(DatasetInfo.load(demo_shards), "test"))
    predicted = predictor.predict(records)
    accuracy = sum(p == r["label"] for p, r in zip(predicted, records, strict=True)) / len(records)
    assert accuracy == metrics["test"]["accuracy"]
    emb = predictor.embed([{"text": "an oak toy"}, {"image": records[0]["image"]}, {}], normalize=True)
    assert emb.shape == (3, 32) and abs(float((emb**2).sum(1).mean()) - 1.0) < 1e-5
    # a record with none of the model's modalities: an error naming it, never a label answered from the head's bias
    for empty in ({}, {"key": "x9", "audio": b"RIFF"}, {"text": None}):
        with pytest.raises(DataError, match=r"record '(0|x9)' has none of the model's modalities \(image, text\)"):
            predictor.predict([empty])


@pytest.mark.parametrize("modalities", ["text", "image"])
def test_single_modality_runs(demo_shards, tmp_path, modalities):
    assert finetune(demo_shards, tmp_path / "run", "--modalities", modalities, "--max-steps", "3") == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["modalities"] == [modalities] and metrics["steps"] == 3


def test_gated_fusion_and_a_config_file(demo_shards, tmp_path):
    assert finetune(demo_shards, tmp_path / "run", "--config", "configs/demo-gated.yaml", "--max-steps", "2") == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["fusion"] == "gated"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--modalities", "text,video"], "unknown modality 'video'"),
        (["--data", "/nonexistent/shards"], "data path /nonexistent/shards does not exist"),
        (["--text-encoder", "bert-tiny"], "unknown encoder 'bert-tiny'"),
        (["--fusion", "concat"], "unknown fusion 'concat'"),
        (["--preset", "tiny_crossattention"], "unknown model preset 'tiny_crossattention'"),
        (["--audio-encoder", "hf-audio:/nonexistent/ast", "--modalities", "audio"], "cannot load audio model"),
        (["--set", "train.epoch=3"], "unknown config key 'train.epoch' (did you mean 'epochs'?)"),
        (["--config", "configs/missing.yaml"], "config file configs/missing.yaml does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(demo_shards, tmp_path, capsys, args, message):
    data = [] if "--data" in args else ["--data", str(demo_shards)]
    code = main(["finetune", *data, "--out", str(tmp_path / "run"), "--max-steps", "1", *TINY_FLAGS, *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("mmfuse: error: ") and message in err and err.count("\n") == 1


def test_three_modalities_token_fusion_from_a_preset_and_reload(demo_shards, tmp_path):
    run = tmp_path / "run"
    code = main(["finetune", "--data", str(demo_shards), "--out", str(run), "--epochs", "1", "--max-steps", "3",
                 "--batch-size", "16", "--no-progress", "--preset", "tiny_cross_attention"])
    assert code == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["modalities"] == ["text", "image", "audio"] and metrics["fusion"] == "cross-attention"
    assert metrics["test"]["count"] == 40
    predictor = mmfuse.load(run)
    record = next(read_records(DatasetInfo.load(demo_shards), "test"))
    assert "audio" in record
    with_audio, without = predictor.predict_proba([record, {k: v for k, v in record.items() if k != "audio"}])
    assert np.isfinite(without).all() and abs(without.sum() - 1) < 1e-5 and not np.allclose(with_audio, without)


def test_audio_encoder_flag(demo_shards, tmp_path):
    code = finetune(demo_shards, tmp_path / "run", "--modalities", "image,audio", "--fusion", "bottleneck",
                    "--audio-encoder", "tiny-audio", "--set", "model.encoders.audio.kwargs={width: 16, layers: 1}",
                    "--max-steps", "2", "--recipe", "full")  # auto would swap tiny-audio on 96 items (test_small_data)
    assert code == 0
    saved = yaml.safe_load((tmp_path / "run" / "run_config.yaml").read_text())
    assert saved["model"]["encoders"]["audio"] == {"name": "tiny-audio", "kwargs": {"width": 16, "layers": 1},
                                                   "pretrained": True}


@pytest.mark.slow  # a fresh interpreter importing torch: about 10 s on 2 cores
def test_console_entry_point_and_module(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mmfuse", "list"], capture_output=True, text=True, check=True)
    assert "tiny-text" in out.stdout and "concat-mlp" in out.stdout
    for name in ("tiny-audio", "hf-audio", "open-clip-text", "cross-attention", "bottleneck", "lmf",
                 "tiny_cross_attention", "multilabel", "contrastive"):
        assert name in out.stdout
    help_text = subprocess.run([sys.executable, "-m", "mmfuse", "finetune", "--help"], capture_output=True,
                               text=True, check=True).stdout
    for flag in ("--modalities", "--config", "--data", "--out", "--epochs", "--fusion", "--set", "--audio-encoder",
                 "--preset", "--task"):
        assert flag in help_text
    bad = subprocess.run([sys.executable, "-m", "mmfuse", "finetune", "--modalities", "smell"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_import_mmfuse_is_light():
    heavy = "('torch', 'transformers', 'timm', 'open_clip', 'soundfile')"
    code = f"import sys, mmfuse; print(any(m.startswith({heavy}) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("command", [name.replace("_", "-") for name in COMMANDS])
def test_help_names_each_default_once(command, capsys):
    """ArgumentDefaultsHelpFormatter appended '(default: None)' to every flag, and a second default to a help that
    already named its own (`(default: text,image) (default: None)`)."""
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    options = capsys.readouterr().out.partition("options:")[2]
    entries = [" ".join(e.split()) for e in re.split(r"\n(?=  -)", options) if e.strip()]
    assert len(entries) > 1 or command == "list"
    for entry in entries:
        assert entry.count("(default") <= 1, entry
        for empty in ("(default: None)", "(default: False)", "(default: [])", "(default: )"):
            assert empty not in entry, entry
    if command == "finetune":
        modalities = next(e for e in entries if e.startswith("--modalities"))
        assert modalities.endswith("(default: text,image)")
        assert any(e.startswith("--lr LR train.lr:") and e.endswith("(default: 0.002)") for e in entries)
        assert any(e.startswith("--augment AUGMENT train.augment:") and e.endswith("(default: auto)") for e in entries)
    if command == "bench":
        assert any(e.startswith("--repeats") and e.endswith("(default: 5)") for e in entries)


@pytest.mark.parametrize("extra, flag", [
    (["--epochs", "3"], "--epochs"),
    (["--set", "train.lr=0.1"], "--set"),
    (["--config", "configs/demo.yaml"], "--config"),
    (["--overwrite", "--no-progress"], "--overwrite"),
    (["--strict"], "--strict"),
    (["--seed", "0"], "--seed"),  # a value equal to the default is still a setting the run would not use
])
def test_resume_refuses_other_settings(tmp_path, capsys, extra, flag):
    assert main(["finetune", "--resume", str(tmp_path / "run"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmfuse: error: --resume ") and err.count("\n") == 1
    assert re.search(rf"drop {flag}\b", err) and "--no-progress" not in err


def test_resume_still_takes_no_progress(tmp_path, capsys):
    assert main(["finetune", "--resume", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "holds no run to resume" in capsys.readouterr().err  # past the settings check, to the run's own


def test_generated_flags_set_their_config_fields(monkeypatch, tmp_path):
    import mmfuse.finetune

    seen = {}
    monkeypatch.setattr(mmfuse.finetune, "finetune", lambda config, **kw: seen.update(config=config, **kw))
    assert main(["finetune", "--lr", "0.01", "--batch-size", "8", "--fusion", "gated", "--modalities", "text",
                 "--workers", "1", "--strict", "--freeze", "text", "--max-steps", "5", "--seed", "3", "--epochs", "4",
                 "--device", "cpu", "--precision", "fp32", "--task", "multilabel", "--init-from", "runs/x",
                 "--augment", "trivial",
                 "--data", "shards/y", "--out", str(tmp_path / "run"), "--no-progress",
                 "--set", "train.epochs=6"]) == 0
    config = seen["config"]
    assert (config.train.lr, config.data.batch_size, config.model.fusion, config.model.modalities) == \
        (0.01, 8, "gated", ["text"])
    assert (config.data.num_workers, config.data.strict, config.train.freeze, config.train.max_steps) == \
        (1, True, ["text"], 5)
    assert (config.train.seed, config.train.device, config.train.precision, config.model.task) == \
        (3, "cpu", "fp32", "multilabel")
    assert (config.train.init_from, config.data.path, config.out, config.train.progress) == \
        ("runs/x", "shards/y", str(tmp_path / "run"), False)
    assert config.train.epochs == 6 and config.train.augment == "trivial"  # --set still wins over a flag
    assert seen["echo"].keywords == {"flush": True} and seen["overwrite"] is False
    # absent flags leave the defaults (and a config file's values) alone
    assert main(["finetune", "--config", "configs/demo-gated.yaml", "--lr", "0.5"]) == 0
    config = seen["config"]
    assert config.model.fusion == "gated" and config.train.lr == 0.5 and config.data.batch_size == 64
    assert config.train.augment == "auto"


def test_flag_table_reads_the_config_dataclasses():
    """Each generated flag's type, default and help come from its field: annotation, default RunConfig, docstring."""
    from mmfuse.commands.finetune import FIELD_FLAGS, config_fields
    from mmfuse.config import RunConfig, TrainConfig

    fields = config_fields()
    assert {k for k in fields if "." not in k} == {f.name for f in dataclasses.fields(RunConfig)}
    kinds = {flag: fields[key].kind for flag, key in FIELD_FLAGS.items()}
    assert (kinds["--lr"], kinds["--batch-size"], kinds["--max-steps"], kinds["--strict"]) == (float, int, int, bool)
    assert kinds["--fusion"] is kinds["--freeze"] is kinds["--init-from"] is str  # a list is given comma-separated
    assert fields["model.encoders"].kind is None  # a mapping: --set only
    assert fields["model.modalities"].default == ["text", "image"] and fields["train.lr"].default == TrainConfig.lr
    assert fields["train.lr"].doc.startswith("Peak learning rate") and "\n" not in fields["train.precision"].doc
    assert all(fields[f"train.{f.name}"].doc for f in dataclasses.fields(TrainConfig))
    assert all(fields[key].doc for key in FIELD_FLAGS.values())


def test_epoch_lines_are_flushed_when_they_happen(demo_shards, tmp_path, monkeypatch):
    """A redirected stdout is block-buffered: each epoch line is flushed as it is printed, not at exit."""
    class Recorder(io.StringIO):
        flushed: list[str] = []

        def flush(self) -> None:
            self.flushed.append(self.getvalue())

    stdout = Recorder()
    monkeypatch.setattr(sys, "stdout", stdout)
    assert finetune(demo_shards, tmp_path / "run", "--max-steps", "8") == 0  # --no-progress: tqdm flushes nothing
    assert any("epoch 1: loss" in text and "epoch 2: loss" not in text for text in stdout.flushed)


@pytest.mark.slow  # a fresh interpreter importing torch: about 10 s on 2 cores
def test_progress_in_a_redirected_log_is_sparse(demo_shards, tmp_path):
    """`mmfuse finetune > log 2>&1`: the epoch lines are in the log, and the bars wrote a few times, not once per
    refresh (24 batches an epoch; a plain tqdm writes up to ten times a second)."""
    log = tmp_path / "log"
    flags = [f for f in TINY_FLAGS if f not in ("--no-progress",)]
    flags[flags.index("--batch-size") + 1] = "4"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONUNBUFFERED", "TQDM_MININTERVAL")}
    with log.open("wb") as out:
        done = subprocess.run([sys.executable, "-m", "mmfuse", "finetune", "--data", str(demo_shards), "--out",
                               str(tmp_path / "run"), "--epochs", "2", *flags], stdout=out, stderr=subprocess.STDOUT,
                              env=env)
    text = log.read_bytes().decode()
    assert done.returncode == 0, text[-2000:]
    assert "epoch 1: loss" in text and "epoch 2: loss" in text and "test accuracy" in text
    bar_writes = len(re.findall(r"epoch \d/2: +\d+%", text))
    assert 2 <= bar_writes <= 6, text  # each bar opens (and may refresh once per 30 s of a slow epoch)
    assert text.count("\r") <= 12, text


def test_progress_bar_is_sparse_off_a_terminal(monkeypatch):
    from mmfuse.progress import SPARSE_INTERVAL, progress_bar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    monkeypatch.delenv("TQDM_MAXINTERVAL", raising=False)
    log = io.StringIO()
    with progress_bar(total=500, file=log, desc="epoch") as bar:
        assert bar.mininterval == bar.maxinterval == SPARSE_INTERVAL
        for _ in range(500):
            bar.update(1)
    assert log.getvalue().count("\r") <= 2 and "500/500" in log.getvalue()  # opened and closed, nothing between
    with progress_bar(total=5, file=Terminal(), mininterval=0.5) as bar:
        assert bar.mininterval == 0.5 and bar.maxinterval == 10  # a terminal: tqdm as asked
    monkeypatch.setenv("TQDM_MININTERVAL", "2")
    with progress_bar(total=5, file=io.StringIO()) as bar:
        assert bar.mininterval < SPARSE_INTERVAL  # left to tqdm, which reads its TQDM_* variables at import
