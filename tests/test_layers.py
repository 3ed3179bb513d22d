"""The package's shape, measured from its source by `tools/codeshape.py` (the command the docs give): no import
cycle between mmfuse's modules, and the model, data, encoder and fusion layers import nothing from training, tasks,
serving or the CLI."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("codeshape", ROOT / "tools" / "codeshape.py")
codeshape = importlib.util.module_from_spec(spec)
spec.loader.exec_module(codeshape)


def test_no_import_cycle_in_the_package():
    _, everything = codeshape.graph()
    assert "mmfuse.model" in everything and "mmfuse.tasks" in everything  # the graph was read
    assert codeshape.cycles(everything) == []


def test_lower_layers_import_nothing_from_higher_ones():
    _, everything = codeshape.graph()
    assert codeshape.layer_violations(everything) == []


def test_the_checker_finds_a_cycle_and_a_layer_violation(tmp_path):
    package = tmp_path / "mmfuse"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data" / "__init__.py").write_text("")
    (package / "data" / "a.py").write_text("from . import b\n")
    (package / "data" / "b.py").write_text("def f():\n    from .a import x\n    from ..train import y\n")
    (package / "train.py").write_text("")
    _, everything = codeshape.graph(tmp_path)
    assert codeshape.cycles(everything) == [["mmfuse.data.a", "mmfuse.data.b"]]
    assert codeshape.layer_violations(everything) == ["mmfuse.data.b imports mmfuse.train"]


def test_the_command_exits_0_on_the_package():
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "codeshape.py"), "imports"], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout
    assert "0 import cycles" in done.stdout


def test_tune_sits_above_finetune():
    """`mmfuse tune` drives `finetune`; nothing below it (fine-tuning, training, tasks, model, data) imports it."""
    for layer in ("mmfuse.model", "mmfuse.data", "mmfuse.encoders", "mmfuse.fusion", "mmfuse.finetune",
                  "mmfuse.train", "mmfuse.tasks"):
        assert "mmfuse.tune" in codeshape.LAYERS[layer], layer
    _, everything = codeshape.graph()
    assert "mmfuse.finetune" in everything["mmfuse.tune.study"]
