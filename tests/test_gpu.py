"""CUDA paths, marked `gpu` (skipped without CUDA by the hook in conftest.py): AMP bf16 / fp16 with the grad scaler,
a demo fine-tune through the CLI, predict / embed on the GPU against the CPU in fp32, pinned batches and
non-blocking copies, the frozen-feature cache on the GPU, a checkpoint written on the GPU read on the CPU.

The tests without the marker run everywhere: `Predictor` honours its precision on the CPU, the skip hook, and the
modules the GPU check uses import without open_clip or soundfile. `benchmarks/gpu_check.sh` runs this file.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import mmfuse
from mmfuse.checkpoint import load_checkpoint, save_checkpoint
from mmfuse.cli import main
from mmfuse.config import resolve
from mmfuse.data.batch import to_device
from mmfuse.data.info import DatasetInfo
from mmfuse.data.loader import make_loader, read_records
from mmfuse.errors import ConfigError
from mmfuse.finetune import FinetuneRun, finetune
from mmfuse.inference import Predictor, resolve_precision
from mmfuse.precision import CPU_BF16_ENV, DTYPES, autocast, cpu_has_fast_bf16
from mmfuse.serving import cosine_parity
from mmfuse.tasks import create_model_and_task
from mmfuse.train.feature_cache import FeatureCache
from mmfuse.train.freeze import apply_freeze
from mmfuse.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
gpu = pytest.mark.gpu
TINY_FLAGS = ["--set", "model.dim=32", "--set", "model.encoders.text.kwargs.width=16",
              "--set", "model.encoders.image.kwargs.width=16", "--set", "model.encoders.image.kwargs.image_size=32",
              "--set", "train.log_every=2", "--batch-size", "16", "--no-progress"]


def cuda_precisions() -> list[str]:
    """The autocast dtypes this GPU runs: fp16 always, bf16 where supported (Ampere and later)."""
    return ["bf16", "fp16"] if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else ["fp16"]


def trainer_on(device: torch.device, tiny_config, demo_shards, **train) -> tuple[Trainer, object, list[dict]]:
    """A tiny model's `Trainer` on `device` and the train split's batches of 16 (pinned when `device` is CUDA)."""
    info = DatasetInfo.load(demo_shards)
    model_cfg = replace(tiny_config.model, labels=info.labels)
    model, task = create_model_and_task(model_cfg)
    trainer = Trainer(model, task, replace(tiny_config.train, device=str(device), **train), device, total_steps=100)
    batches = list(make_loader(info, "train", model.preprocessors(), 16, pin_memory=device.type == "cuda"))
    return trainer, model_cfg, batches


def linear_output_dtypes(predictor: Predictor, run) -> set[torch.dtype]:
    """The dtypes the model's `nn.Linear` layers produced while `run()` ran (what autocast decided)."""
    seen: set[torch.dtype] = set()
    handles = [m.register_forward_hook(lambda mod, args, out: seen.add(out.dtype))
               for m in predictor.model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return seen


def assert_parity(a: np.ndarray, b: np.ndarray, minimum: float = 0.99) -> None:
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
    parity = cosine_parity(a, b)
    assert parity["min"] >= minimum, parity


# -- everywhere: Predictor precision on the CPU, the skip hook, imports ----------------------------------------------

def image_records(n: int = 12) -> list[dict]:
    rng = np.random.default_rng(0)
    texts = ["an oak toy", "a small steel block with a smooth finish", "walnut", "", "pine figure", "iron token"]
    # every third record has no image, and an empty text always comes with one: each record has a modality
    # (`predict` refuses a record with none)
    return [{"key": f"r{i}", "text": texts[i % len(texts)],
             **({"image": rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)} if i % 3 or not texts[i % len(texts)]
                else {})} for i in range(n)]


def test_predictor_honours_bf16_autocast_on_the_cpu_and_returns_fp32(tiny_config, demo_shards):
    info = DatasetInfo.load(demo_shards)
    config = replace(tiny_config.model, labels=info.labels)
    model = create_model_and_task(config)[0].eval()
    fp32 = Predictor(copy.deepcopy(model), config, CPU, batch_size=5)
    bf16 = Predictor(copy.deepcopy(model), config, CPU, batch_size=5, precision="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    records = image_records()
    assert linear_output_dtypes(fp32, lambda: fp32.embed(records)) == {torch.float32}
    assert torch.bfloat16 in linear_output_dtypes(bf16, lambda: bf16.embed(records))
    assert torch.bfloat16 in linear_output_dtypes(bf16, lambda: bf16.predict_proba(records))
    assert torch.bfloat16 in linear_output_dtypes(bf16, lambda: bf16.encode(records, "text"))
    a, b = fp32.embed_modalities(records), bf16.embed_modalities(records)
    for name in ("fused", "text", "image"):
        assert_parity(a[name], b[name])
    assert_parity(fp32.encode(records, "text"), bf16.encode(records, "text"))
    p32, p16 = fp32.predict_proba(records), bf16.predict_proba(records)
    assert p16.dtype == np.float32 and np.abs(p32 - p16).max() < 0.02


@pytest.fixture
def cpu_bf16_env(monkeypatch):
    """monkeypatch for MMFUSE_CPU_BF16; the cached CPU check is forgotten before the variable is restored."""
    yield monkeypatch
    cpu_has_fast_bf16.cache_clear()


def test_precision_auto_follows_the_hardware_and_other_backends_run_fp32(cpu_bf16_env):
    for flag, expected in (("1", "bf16"), ("0", "fp32")):
        cpu_bf16_env.setenv(CPU_BF16_ENV, flag)
        cpu_has_fast_bf16.cache_clear()
        assert resolve_precision("auto", CPU) == expected
        assert resolve_precision("auto", CPU, backend="int8") == "fp32"
    assert mmfuse.load("tiny_bottleneck").precision == "fp32"  # the default keeps CPU outputs as they were
    with pytest.raises(ConfigError, match="fp16 autocast is not supported on the CPU"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ConfigError, match="precision must be auto, fp32, bf16 or fp16"):
        resolve_precision("half", CPU)
    with pytest.raises(ConfigError, match="applies to backend='fp32'; the int8 backend"):
        mmfuse.load("tiny_bottleneck", backend="int8", precision="bf16")
    assert mmfuse.load("tiny_bottleneck", backend="bf16", precision="auto").precision == "fp32"  # bf16 weights


def test_embed_command_takes_a_precision_and_resumes_only_with_the_same(demo_shards, tmp_path, capsys):
    out = tmp_path / "bf16"
    args = ["embed", "--run", "tiny_bottleneck", "--shards", str(demo_shards), "--splits", "test", "--modalities",
            "image,text", "--no-progress", "--out", str(out)]
    assert main([*args, "--precision", "bf16"]) == 0
    assert json.loads((out / "export.json").read_text())["model"]["precision"] == "bf16"
    records = list(read_records(DatasetInfo.load(demo_shards), "test"))
    assert_parity(mmfuse.load("tiny_bottleneck").embed(records, modalities="text,image"),
                  np.load(out / "fused_feat.npy"))
    capsys.readouterr()
    assert main(args) == 2  # an fp32 run may not resume a bf16 export
    assert "holds an export with other model" in capsys.readouterr().err


def test_loader_pins_memory_only_for_a_cuda_device(tiny_layers):
    run = FinetuneRun(resolve({**tiny_layers, "train": {**tiny_layers["train"], "device": "cpu"}}), echo=lambda *_: 0)
    assert run.loader_kwargs["pin_memory"] is False


@pytest.mark.slow  # a fresh interpreter importing torch: about 10 s on 2 cores
def test_gpu_tests_are_skipped_without_cuda_with_a_reason():
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path}
    out = subprocess.run([sys.executable, "-m", "pytest", __file__, "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "needs CUDA" in out.stdout and " skipped" in out.stdout
    assert " passed" not in out.stdout and " failed" not in out.stdout and " error" not in out.stdout


@pytest.mark.slow  # a fresh interpreter importing torch: about 10 s on 2 cores
def test_the_gpu_checks_modules_import_without_open_clip_or_soundfile():
    """The GPU machine has neither: `import mmfuse`, the CLI, training, the bench and embedding import them lazily."""
    code = ("import sys\n"
            "sys.modules.update(open_clip=None, soundfile=None)  # as if not installed: import fails, find_spec None\n"
            "import mmfuse, mmfuse.cli, mmfuse.finetune, mmfuse.bench.suite, mmfuse.bench.cases, mmfuse.inference\n"
            "from mmfuse.model import ModelConfig\nfrom mmfuse.tasks import create_model_and_task\n"
            "from mmfuse.bench.presets import BenchConfig, build_cases\n"
            "for case in build_cases(BenchConfig(preset='gpu', cases=['encode', 'train', 'embed'])):\n"
            "    assert case.encoders()\n"
            "from mmfuse.model_config import default_encoders\n"
            "encoders = {m: s for m, s in default_encoders().items() if m != 'audio'}\n"
            "model = create_model_and_task(ModelConfig(['image', 'text'], encoders, labels=['a', 'b']))[0]\n"
            "assert mmfuse.load('tiny_bottleneck').embed([{'text': 'an oak toy'}]).shape == (1, 16)\n"
            "loaded = [m for m, v in sys.modules.items() if v and m.startswith(('open_clip', 'soundfile'))]\n"
            "print(sorted(loaded))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def run_gpu_check(*args: str, **env: str) -> subprocess.CompletedProcess:
    """benchmarks/gpu_check.sh as the GPU machine would run it, with CUDA hidden and this interpreter."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


def test_gpu_check_script_parses_and_stops_clearly_without_cuda():
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")]).returncode == 0
    out = run_gpu_check()
    assert out.returncode == 2 and "CUDA is not available to PyTorch on this machine" in out.stderr
    assert "Traceback" not in out.stderr
    bad = run_gpu_check("--nope")
    assert bad.returncode == 2 and "unknown argument '--nope'" in bad.stderr


@pytest.mark.slow
def test_gpu_check_dry_run_installs_nothing_present_and_writes_its_summary(tmp_path):
    out = run_gpu_check("--dry-run", "--copy-to", str(tmp_path / "out"), GPU_CHECK_WORK=str(tmp_path / "work"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "nothing needed is missing" in out.stdout  # this environment has every package the check needs
    (tag,) = [p.name for p in (tmp_path / "work" / "dry-run").iterdir()]
    summary = (tmp_path / "out" / tag / "gpu-check.md").read_text()
    for step in ("gpu tests", "demo data", "bench", "demo finetune"):
        assert f"| {step} | dry run |" in summary
    assert "--preset gpu --device cuda --precision bf16" in out.stdout  # the bench it would run


# -- CUDA --------------------------------------------------------------------------------------------------------------

@gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_amp_training_lowers_the_loss_and_keeps_fp32_parameters_finite(tiny_config, demo_shards, precision):
    if precision not in cuda_precisions():
        pytest.skip(f"this GPU does not support {precision}")
    cuda = torch.device("cuda")
    trainer, _, batches = trainer_on(cuda, tiny_config, demo_shards, precision=precision, grad_clip=1.0)
    assert trainer.precision == precision
    assert trainer.scaler.is_enabled() == (precision == "fp16")  # bf16 has fp32's range: no loss scaling
    batch = to_device(batches[0], cuda)
    with torch.no_grad(), autocast(cuda, precision):
        assert trainer.model(batch).dtype == DTYPES[precision]  # the head ran under autocast
    first = trainer.train_step(batch).item()
    for _ in range(30):
        last = trainer.train_step(batch).item()
    assert math.isfinite(first) and last < 0.5 * first
    for name, p in trainer.model.named_parameters():
        assert p.dtype == torch.float32 and bool(torch.isfinite(p).all()), name  # master weights stay fp32
    if precision == "fp16":
        assert trainer.scaler.state_dict()["scale"] > 1.0  # the scaler is live (disabled, it has no state)


@gpu
def test_fp16_grad_scaler_skips_an_overflowing_step_and_backs_off(tiny_config, demo_shards):
    if "fp16" not in cuda_precisions():
        pytest.skip("no fp16 on this GPU")
    cuda = torch.device("cuda")
    trainer, _, batches = trainer_on(cuda, tiny_config, demo_shards, precision="fp16", grad_clip=1.0)
    batch = to_device(batches[0], cuda)
    trainer.train_step(batch)
    trainer.scaler.update(2.0**40)  # scaled fp16 gradients overflow at this scale
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train_step(batch)
    assert trainer.scaler.get_scale() == 2.0**39  # halved after the inf
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p.detach(), before[name]), name  # the step was skipped, nothing became inf
    trainer.scaler.update(2.0**10)
    trainer.train_step(batch)
    assert any(not torch.equal(p.detach(), before[n]) for n, p in trainer.model.named_parameters())


@pytest.fixture(scope="module")
def gpu_run(demo_shards, tmp_path_factory) -> Path:
    """A tiny fine-tune of 4 steps on the GPU through the CLI (`--device cuda`, precision auto)."""
    run = tmp_path_factory.mktemp("gpu") / "run"
    code = main(["finetune", "--data", str(demo_shards), "--out", str(run), "--epochs", "1", "--max-steps", "4",
                 "--device", "cuda", *TINY_FLAGS])
    assert code == 0
    return run


@gpu
def test_finetune_through_the_cli_on_the_gpu(gpu_run):
    metrics = json.loads((gpu_run / "metrics.json").read_text())
    assert metrics["device"].startswith("cuda") and metrics["precision"] == cuda_precisions()[0]
    assert metrics["steps"] == 4 and math.isfinite(metrics["epochs"][0]["train_loss"])
    assert metrics["test"]["count"] == 40 and metrics["skipped_total"] == 0
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    for ckpt in ("best", "last"):
        assert (gpu_run / "checkpoints" / ckpt / "model.safetensors").exists()


@gpu
def test_predict_and_embed_on_the_gpu_match_the_cpu_in_fp32(gpu_run, demo_shards):
    records = list(read_records(DatasetInfo.load(demo_shards), "test"))
    cpu = mmfuse.load(gpu_run, device="cpu")
    reference = cpu.embed_modalities(records)
    proba = cpu.predict_proba(records)
    for precision in ["fp32", *cuda_precisions()]:
        predictor = mmfuse.load(gpu_run, device="cuda", precision=precision, batch_size=16)
        assert predictor.precision == precision and next(predictor.model.parameters()).is_cuda
        dtypes = linear_output_dtypes(predictor, lambda p=predictor: p.embed(records[:8]))
        if precision == "fp32":
            assert dtypes == {torch.float32}
        else:
            assert DTYPES[precision] in dtypes
        embedded = predictor.embed_modalities(records)
        for name in ("fused", "text", "image"):
            assert_parity(reference[name], embedded[name])
        np.testing.assert_array_equal(reference["present_image"], embedded["present_image"])
        assert_parity(cpu.encode(records, "text"), predictor.encode(records, "text"))
        on_gpu = predictor.predict_proba(records)
        assert on_gpu.dtype == np.float32 and np.abs(on_gpu - proba).max() < 0.05, precision
        assert len(predictor.predict(records)) == len(records)
    if "bf16" in cuda_precisions():  # the serving backend with bf16 weights (no autocast) on the GPU
        weights = mmfuse.load(gpu_run, device="cuda", backend="bf16", batch_size=16)
        assert weights.backend == "bf16" and weights.precision == "fp32"
        assert_parity(reference["fused"], weights.embed(records))


@gpu
def test_loader_batches_are_pinned_and_copied_without_blocking(demo_shards, preprocessors, tiny_layers):
    cuda = torch.device("cuda")
    batch = next(iter(make_loader(DatasetInfo.load(demo_shards), "train", preprocessors, 16, pin_memory=True)))
    tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    assert {"text_ids", "image", "label"} <= set(tensors)
    assert all(v.is_pinned() for v in tensors.values())
    moved = to_device(batch, cuda)  # non_blocking from pinned memory: the copy is queued on the stream
    torch.cuda.synchronize()
    for name, value in tensors.items():
        assert moved[name].is_cuda and torch.equal(moved[name].cpu(), value), name
    assert moved["key"] == batch["key"]
    run = FinetuneRun(resolve({**tiny_layers, "train": {**tiny_layers["train"], "device": "cuda"}}),
                      echo=lambda *_: 0)
    assert run.loader_kwargs["pin_memory"] is True


@gpu
def test_frozen_feature_cache_on_the_gpu(tiny_config, tiny_layers, demo_shards, tmp_path):
    info = DatasetInfo.load(demo_shards)
    config = replace(tiny_config.model, labels=info.labels)
    cuda = torch.device("cuda")
    features = []
    for device, precision in ((CPU, "fp32"), (cuda, cuda_precisions()[0])):
        torch.manual_seed(0)
        model = create_model_and_task(config)[0].to(device)
        apply_freeze(model, ["image"])
        cache = FeatureCache(model, config.encoders, info, device, precision, 16, echo=lambda *_: 0)
        cache.prepare("val")
        features.append(cache.splits[("image", "val")])
    on_cpu, on_gpu = features
    assert on_gpu.keys == on_cpu.keys and on_gpu.pooled.device.type == "cpu"  # held in host memory
    assert_parity(on_cpu.pooled.float().numpy(), on_gpu.pooled.float().numpy())

    layers = {**tiny_layers, "train": {**tiny_layers["train"], "device": "cuda", "freeze": ["image"]}}
    recomputed = finetune(resolve({**layers, "train": {**layers["train"], "cache_frozen": False},
                                   "out": str(tmp_path / "recompute")}), echo=lambda *_: 0)
    lines: list[str] = []
    cached = finetune(resolve({**layers, "out": str(tmp_path / "cached")}), echo=lines.append)
    assert sum("cached frozen image features" in line for line in lines) == 3
    assert cached["device"].startswith("cuda") and len(cached["epochs"]) == len(recomputed["epochs"]) == 2
    for x, y in zip(cached["epochs"], recomputed["epochs"], strict=True):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=0.02)  # bf16 rounding, TF32 convolutions
    for split in ("val", "test"):
        assert cached[split]["accuracy"] == pytest.approx(recomputed[split]["accuracy"], abs=3 / 32)


@gpu
def test_checkpoint_saved_on_the_gpu_loads_on_the_cpu_with_identical_fp32_outputs(tiny_config, demo_shards,
                                                                                  tmp_path):
    cuda = torch.device("cuda")
    trainer, config, batches = trainer_on(cuda, tiny_config, demo_shards, precision="fp32")
    trainer.train_step(to_device(batches[0], cuda))
    save_checkpoint(trainer.model, config, tmp_path / "ckpt", {"epoch": 1})
    loaded, loaded_config, meta = load_checkpoint(tmp_path / "ckpt")
    assert meta["epoch"] == 1 and loaded_config.labels == config.labels
    saved = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    for name, value in loaded.state_dict().items():
        assert value.device.type == "cpu" and torch.equal(value, saved[name]), name  # bit for bit
    reference = copy.deepcopy(trainer.model).cpu().eval()
    loaded.eval(), trainer.model.eval()
    with torch.no_grad():
        on_cpu = loaded(batches[1])
        assert torch.equal(on_cpu, reference(batches[1]))  # the same fp32 function on the CPU
        on_gpu = trainer.model(to_device(batches[1], cuda)).cpu()
    torch.testing.assert_close(on_cpu, on_gpu, atol=1e-2, rtol=1e-2)  # CUDA kernels (TF32 convolutions) differ
