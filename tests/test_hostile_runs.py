"""Hostile runs and outputs (issue 14, items 6-7): one writer per output directory (a lock naming its holder, gone
with the holder), another run's directory never overwritten, a moved run resumed where it is, and every unwritable
output or corrupt artefact one line naming it, exit 2."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_MODEL

from mmfuse.checkpoint import save_checkpoint
from mmfuse.cli import main
from mmfuse.errors import OutputError
from mmfuse.model import ModelConfig
from mmfuse.outputs import LOCK, check_output_dir, hold
from mmfuse.tasks import create_model_and_task

HOLDER = """
import sys, time
from mmfuse.outputs import hold
lock = hold(sys.argv[1], sys.argv[2], beside=sys.argv[3] == "1")
print("held", flush=True)
time.sleep(120)
"""


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmfuse: error: ") and "Traceback" not in err[0], err
    return err[0]


def text_manifest(path: Path, n: int = 12) -> Path:
    path.write_text("".join(json.dumps({"key": f"k{i}", "text": f"an oak toy {i}", "label": "ab"[i % 2]}) + "\n"
                            for i in range(n)))
    return path


def layers(data: Path, out: Path, **train) -> dict:
    return {"model": dict(TINY_MODEL), "data": {"path": str(data), "batch_size": 16, "eval_batch_size": 16},
            "train": {"epochs": 1, "lr": 3e-3, "progress": False, "log_every": 2, "precision": "fp32", **train},
            "out": str(out)}


def write_config(path: Path, data: Path, out: Path, **train) -> Path:
    path.write_text(yaml.safe_dump(layers(data, out, **train)))
    return path


def holder(target: Path, command: str, beside: bool = False) -> subprocess.Popen:
    """A process that takes `target`'s lock through the public function and keeps it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get(
        "PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(target), command, "1" if beside else "0"],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture(scope="module")
def finished_run(demo_shards, tmp_path_factory) -> Path:
    """A two-epoch tiny run (fp32), finished: metrics.json, best/last checkpoints, and the resume checkpoint
    written after epoch 1."""
    from mmfuse.config import resolve
    from mmfuse.finetune import finetune

    out = tmp_path_factory.mktemp("runs") / "run"
    finetune(resolve(layers(demo_shards, out, epochs=2, checkpoint_every=0)), echo=lambda *_: None)
    return out


# ---- item 6: one writer per output -------------------------------------------------------------------------------


def test_a_second_lock_names_the_holder_and_the_released_lock_leaves_nothing(tmp_path):
    out = tmp_path / "new" / "out"
    with hold(out, "embed"):
        assert (out / LOCK).exists()
        with pytest.raises(OutputError, match=rf"is being written by another mmfuse process \(pid {os.getpid()}: "
                                              r"mmfuse embed, started 20\d\d-"):
            hold(out, "embed")
    assert not (tmp_path / "new").exists()  # made for the lock, empty, removed with it
    with hold(out, "embed"):
        pass


def cli_args(command: str, tmp_path: Path, demo_shards: Path, out: Path) -> list[str]:
    if command == "finetune":
        return ["finetune", "--config", str(write_config(tmp_path / "run.yaml", demo_shards, out, max_steps=1))]
    if command == "shard":
        return ["shard", "--manifest", str(text_manifest(tmp_path / "items.jsonl")), "--out", str(out), "--image", "",
                "--audio", "", "--no-progress"]
    return ["embed", "--run", "tiny_bottleneck", "--shards", str(demo_shards), "--splits", "val", "--out", str(out),
            "--no-progress"]


@pytest.mark.parametrize("command", ["finetune", "shard", "embed"])
def test_a_second_writer_is_refused_naming_the_holder_until_the_holder_dies(command, demo_shards, tmp_path, capsys):
    out = tmp_path / "out"
    proc = holder(out, command, beside=command == "shard")
    try:
        assert main(cli_args(command, tmp_path, demo_shards, out)) == 2
        line = one_error_line(capsys)
        assert f"--out {out} is being written by another mmfuse process (pid {proc.pid}: mmfuse {command}" in line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert list(out.parent.glob(f"*{LOCK}")) or (out / LOCK).exists()  # the killed holder's file stays ...
    assert main(cli_args(command, tmp_path, demo_shards, out)) == 0  # ... but not its lock
    assert not (out / LOCK).exists() and not list(out.parent.glob(f".out{LOCK}"))


@pytest.mark.slow
def test_two_concurrent_embeds_into_one_out(demo_shards, tmp_path):
    """The SIGBUS of the issue: two `mmfuse embed` into one --out at once; one is refused, the other completes."""
    out = tmp_path / "emb"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    args = [sys.executable, "-m", "mmfuse", *cli_args("embed", tmp_path, demo_shards, out)]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), results  # both finish (one after the other) or one is refused; never a crash
    for code, err in results:
        if code == 2:
            assert "is being written by another mmfuse process" in err and "Traceback" not in err
    assert (out / "fused_feat.npy").exists() and not (out / LOCK).exists()


# ---- item 6: another run's directory -----------------------------------------------------------------------------


def test_finetune_refuses_a_finished_run_and_overwrite_replaces_it(finished_run, demo_shards, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = (run / "checkpoints" / "best" / "model.safetensors").read_bytes()
    config = write_config(tmp_path / "new.yaml", demo_shards, run, max_steps=1)
    assert main(["finetune", "--config", str(config)]) == 2
    assert one_error_line(capsys) == (f"mmfuse: error: --out {run} holds a finished run (metrics.json, best epoch "
                                      f"{json.loads((run / 'metrics.json').read_text())['best_epoch']}); a new run "
                                      f"would overwrite it: pass --overwrite to replace it, or choose another --out")
    assert (run / "checkpoints" / "best" / "model.safetensors").read_bytes() == before
    assert (run / "checkpoints" / "resume").exists()
    assert main(["finetune", "--config", str(config), "--overwrite"]) == 0
    assert not (run / "checkpoints" / "resume").exists()  # the old run's resume checkpoint went with it
    assert json.loads((run / "metrics.json").read_text())["steps"] == 1


def test_finetune_refuses_an_interrupted_run_pointing_at_resume(demo_shards, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints" / "resume").mkdir(parents=True)
    (run / "checkpoints" / "resume" / "train_state.pt").write_bytes(b"")
    (run / "run_config.yaml").write_text("{}")
    assert main(["finetune", "--config", str(write_config(tmp_path / "c.yaml", demo_shards, run))]) == 2
    line = one_error_line(capsys)
    assert "holds an interrupted run (checkpoints/resume/train_state.pt)" in line
    assert f"continue it with `mmfuse finetune --resume {run}`" in line


def test_an_empty_or_foreign_out_is_fine_and_its_files_are_kept(demo_shards, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    assert main(["finetune", "--config", str(write_config(tmp_path / "c.yaml", demo_shards, run, max_steps=1))]) == 0
    assert (run / "notes.txt").read_text() == "mine" and (run / "metrics.json").exists()


def test_resume_of_a_moved_run_resumes_it_where_it_is(finished_run, tmp_path, capsys):
    moved = tmp_path / "moved"
    shutil.copytree(finished_run, moved)
    original = json.loads((finished_run / "metrics.json").read_text())
    stamp = (finished_run / "metrics.json").stat().st_mtime_ns
    assert main(["finetune", "--resume", str(moved), "--no-progress"]) == 0
    assert f"resuming {moved} at epoch 2" in capsys.readouterr().out
    assert (finished_run / "metrics.json").stat().st_mtime_ns == stamp  # the original is untouched
    assert yaml.safe_load((moved / "run_config.yaml").read_text())["out"] == str(moved)
    resumed = json.loads((moved / "metrics.json").read_text())
    assert resumed["test"] == original["test"] and resumed["best_epoch"] == original["best_epoch"]


def test_resume_of_a_directory_without_a_run_is_one_line(tmp_path, capsys):
    assert main(["finetune", "--resume", str(tmp_path / "nothing")]) == 2
    assert "holds no run to resume (run_config.yaml is missing)" in one_error_line(capsys)
    assert not (tmp_path / "nothing").exists()


# ---- item 7: outputs that cannot be written ----------------------------------------------------------------------


def output_args(command: str, out: str, demo_shards: Path, tmp_path: Path) -> list[str]:
    return {
        "finetune": ["finetune", "--data", str(demo_shards), "--max-steps", "1", "--out", out],
        "shard": ["shard", "--manifest", str(text_manifest(tmp_path / "items.jsonl")), "--image", "", "--audio", "",
                  "--out", out],
        "embed": ["embed", "--run", "tiny_bottleneck", "--shards", str(demo_shards), "--out", out],
        "demo-data": ["demo-data", "--out", out],
        "demo-data-manifest": ["demo-data", "--manifest", out, "--count", "3"],
        "export-onnx": ["export-onnx", "--run", "tiny_bottleneck", "--out", out],
    }[command]


COMMANDS = ["finetune", "shard", "embed", "demo-data", "demo-data-manifest", "export-onnx"]


@pytest.mark.parametrize("command", COMMANDS)
def test_an_out_that_is_a_file_is_one_line(command, demo_shards, tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("x")
    out = file if command != "export-onnx" else tmp_path
    assert main(output_args(command, str(out), demo_shards, tmp_path)) == 2
    line = one_error_line(capsys)
    assert str(out) in line and ("is a file, not a directory" in line or "is a directory" in line)
    assert file.read_text() == "x"


@pytest.mark.parametrize("command", COMMANDS)
def test_an_out_under_a_file_is_one_line(command, demo_shards, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "sub" / ("model.onnx" if command == "export-onnx" else "")
    assert main(output_args(command, str(out).rstrip("/"), demo_shards, tmp_path)) == 2
    assert f"cannot be {'written' if command == 'export-onnx' else 'created'}: {tmp_path / 'file'} is a file" in \
        one_error_line(capsys)


@pytest.mark.parametrize("command", COMMANDS)
def test_an_out_on_a_read_only_filesystem_is_one_line(command, demo_shards, tmp_path, capsys, monkeypatch):
    """Tests run as root, whom mode bits do not stop: the read-only mount is simulated where `check_output_dir`
    asks the kernel (access(2) answers EROFS to root too)."""
    readonly = tmp_path / "ro"
    readonly.mkdir()
    real_access, real_statvfs = os.access, os.statvfs
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == readonly else real_access(p, mode))

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", lambda p: ReadOnly() if Path(p) == readonly else real_statvfs(p))
    out = readonly / ("model.onnx" if command == "export-onnx" else "out")
    assert main(output_args(command, str(out), demo_shards, tmp_path)) == 2
    assert f"{out} cannot be created: {readonly} is on a read-only filesystem" in one_error_line(capsys).replace(
        "cannot be written", "cannot be created")
    assert list(readonly.iterdir()) == []


def test_a_filesystem_error_while_writing_is_one_line(demo_shards, tmp_path, capsys, monkeypatch):
    """A disk that fills (or turns read-only) after the checks: the OSError is one line naming the file."""
    import mmfuse.export.writer as writer

    real = writer.write_atomic

    def full(path, text):  # the disk fills after the export's plan (export.json) is written
        if path.name == "export.json":
            return real(path, text)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(writer, "write_atomic", full)
    out = tmp_path / "emb"
    assert main(["embed", "--run", "tiny_bottleneck", "--shards", str(demo_shards), "--splits", "val", "--out",
                 str(out), "--no-progress"]) == 2
    assert one_error_line(capsys) == f"mmfuse: error: {out / 'i_id_mapping.csv'}: No space left on device"


def test_check_output_dir_accepts_new_and_existing_dirs(tmp_path):
    assert check_output_dir(tmp_path) == tmp_path
    assert check_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # checking makes nothing


# ---- item 7: corrupt artefacts and bad settings ------------------------------------------------------------------


@pytest.fixture
def saved_run(tmp_path) -> Path:
    config = ModelConfig(modalities=["text", "image"], labels=["a", "b"], **TINY_MODEL)
    return save_checkpoint(create_model_and_task(config)[0], config, tmp_path / "saved")


@pytest.mark.parametrize("content", [b"\x00\xff garbage", b"\xff" * 8 + b"{}", b""])
def test_a_corrupt_model_safetensors_is_one_line(saved_run, demo_shards, tmp_path, content, capsys):
    (saved_run / "model.safetensors").write_bytes(content)
    assert main(["embed", "--run", str(saved_run), "--shards", str(demo_shards), "--out", str(tmp_path / "e")]) == 2
    assert one_error_line(capsys) == (f"mmfuse: error: {saved_run / 'model.safetensors'} is corrupt (not a readable "
                                      f"safetensors file); rewrite it or use another run")


def test_a_corrupt_config_json_is_one_line_through_the_cli(saved_run, demo_shards, tmp_path, capsys):
    (saved_run / "config.json").write_bytes(b"\x89PNG\r\n not json")
    assert main(["embed", "--run", str(saved_run), "--shards", str(demo_shards), "--out", str(tmp_path / "e")]) == 2
    assert f"{saved_run / 'config.json'} is corrupt" in one_error_line(capsys)


@pytest.mark.parametrize("content", [b"PK\x03\x04 truncated zip", b"not a torch file", b""])
def test_a_corrupt_train_state_is_one_line(finished_run, tmp_path, content, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    state = run / "checkpoints" / "resume" / "train_state.pt"
    state.write_bytes(content)
    assert main(["finetune", "--resume", str(run), "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert f"{state} is corrupt (" in line and "not a train state mmfuse wrote" in line


def test_resume_of_a_mixed_directory_is_one_line(finished_run, saved_run, tmp_path, capsys):
    """checkpoints/resume holding another run's weights (what clobbering used to leave) is named, not a traceback."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    resume = run / "checkpoints" / "resume"
    for name in ("config.json", "model.safetensors"):
        shutil.copy(saved_run / name, resume / name)  # a two-label text+image model: another head
    assert main(["finetune", "--resume", str(run), "--no-progress"]) == 2
    assert f"{resume} does not fit the run of {run / 'run_config.yaml'}" in one_error_line(capsys)


@pytest.mark.parametrize("content", [b"\xff\xfe\x00binary", b'{"splits": ', b"[1, 2"])
def test_a_corrupt_dataset_json_is_one_line(demo_shards, tmp_path, content, capsys):
    data = tmp_path / "data"
    shutil.copytree(demo_shards, data)
    (data / "dataset.json").write_bytes(content)
    assert main(["finetune", "--data", str(data), "--out", str(tmp_path / "run")]) == 2
    assert f"{data / 'dataset.json'} is corrupt (not valid JSON: " in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    (lambda t: ["--config", str(t)], "is a directory: pass a YAML file"),
    (lambda t: ["--preset", str(preset(t, dim="big"))], "preset.json: model.dim must be an integer, got 'big'"),
    (lambda t: ["--preset", str(preset(t, dropout="high"))], "preset.json: model.dropout must be a number, got 'high'"),
    (lambda t: ["--preset", str(preset(t, modalities=5))], "preset.json: model.modalities must be a list, got 5"),
    (lambda t: ["--preset", str(preset(t, fusion_kwargs=3))], "model.fusion_kwargs must be a mapping"),
    (lambda t: ["--fusion", "bottleneck", "--set", "model.fusion_kwargs.layers=-1"],
     "model.fusion_kwargs.layers must be an integer >= 1, got -1"),
    (lambda t: ["--fusion", "cross-attention", "--set", "model.fusion_kwargs.heads=0"],
     "model.fusion_kwargs.heads must be an integer >= 1, got 0"),
    (lambda t: ["--fusion", "bottleneck", "--set", "model.fusion_kwargs.dropout=1.5"],
     "model.fusion_kwargs.dropout is a probability in [0, 1), got 1.5"),
    (lambda t: ["--set", "model.fusion_kwargs.bogus=1"],
     "model.fusion_kwargs.bogus: fusion 'concat-mlp' takes no option 'bogus'; it takes hidden, dropout"),
])
def test_bad_settings_are_one_line(args, message, tmp_path, capsys):
    assert main(["finetune", "--out", str(tmp_path / "run"), *args(tmp_path)]) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def preset(tmp_path: Path, **fields) -> Path:
    path = tmp_path / "preset.json"
    path.write_text(json.dumps({"modalities": ["text"], **fields}))
    return path


@pytest.mark.parametrize("args, message", [
    (["--count", "-5"], "demo catalogue: count must be >= 1, got -5"),
    (["--count", "0"], "demo catalogue: count must be >= 1, got 0"),
    (["--seed", "-1"], "demo catalogue: seed must be in [0, 2**32), got -1"),
])
def test_bad_demo_catalogue_numbers_are_one_line(args, message, tmp_path, capsys):
    assert main(["demo-data", "--manifest", str(tmp_path / "cat"), *args]) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "cat").exists()


def test_demo_data_never_replaces_what_is_not_its_own(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert main(["demo-data", "--out", str(mine)]) == 2
    assert "is not empty and holds no mmfuse demo dataset" in one_error_line(capsys)
    assert (mine / "thesis.tex").read_text() == "years of work"
    cat = tmp_path / "cat"
    assert main(["demo-data", "--manifest", str(cat), "--count", "2"]) == 0
    capsys.readouterr()
    assert main(["demo-data", "--manifest", str(cat), "--count", "3"]) == 2
    assert f"already holds a catalogue ({cat / 'items.jsonl'})" in one_error_line(capsys)
    assert len((cat / "items.jsonl").read_text().splitlines()) == 2
