"""`mmfuse bench`: every case for one tiny iteration through the CLI, the report schema, the raw decode baseline,
compare, and that the train case times `Trainer.train_step` itself. No timing assertions."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import pytest
import torch

from mmfuse.bench import BenchConfig, format_comparison, load_report, validate, write_report
from mmfuse.bench.cases import RUNNERS
from mmfuse.bench.common import Context
from mmfuse.bench.presets import DEFAULT_KINDS, build_cases
from mmfuse.bench.rawdecode import raw_batches
from mmfuse.bench.suite import calibration_size
from mmfuse.bench.timing import count_flops, summarize
from mmfuse.cli import main
from mmfuse.data.info import DatasetInfo
from mmfuse.data.loader import build_pipeline
from mmfuse.errors import ConfigError
from mmfuse.model import ModelConfig
from mmfuse.tasks import create_model_and_task
from mmfuse.train.trainer import Trainer

FAST = ["--preset", "tiny", "--repeats", "1", "--warmup", "0", "--min-time", "0"]


@pytest.fixture(scope="module")
def tiny_report(demo_shards, tmp_path_factory):
    """One tiny run of the whole suite through the CLI: (report directory, parsed report)."""
    out = tmp_path_factory.mktemp("bench") / "results"
    assert main(["bench", *FAST, "--data", str(demo_shards), "--out", str(out)]) == 0
    return out, json.loads((out / "report.json").read_text())


def test_cli_writes_every_case_and_valid_report(tiny_report):
    out, report = tiny_report
    for name in ("report.json", "report.md", "throughput.png", "split.png", "mfu.png"):
        assert (out / name).stat().st_size > 0, name
    validate(report)
    assert load_report(out / "report.json") == report
    assert {c["kind"] for c in report["cases"]} == set(DEFAULT_KINDS)
    names = {c["name"] for c in report["cases"]}
    assert {"loader/tiny/text+image+audio", "encode/tiny/audio", "encode/tiny/text@24tok"} <= names
    long_text, short_text = (next(c for c in report["cases"] if c["name"] == n)
                             for n in ("encode/tiny/text@24tok", "encode/tiny/text"))
    assert long_text["flops_per_sample"] > short_text["flops_per_sample"]  # the longer sequences are what ran
    cal = report["calibration"]
    assert cal["peak_flops"] == max(cal["before_flops"], cal["after_flops"]) > 0
    for case in report["cases"]:
        assert case["series"]["mmfuse"]["median"] > 0
        assert case["memory"]["bytes"] > 0
        if case["kind"] in ("loader", "train", "embed"):
            assert case["ratio"]["median"] > 0 and "baseline" in case["series"]
        if case["kind"] in ("encode", "train", "embed"):
            assert case["flops_per_sample"] > 0 and 0 < case["mfu"]["mmfuse"]
        if case["kind"] == "train":
            assert case["split"]["samples"] > 0 and 0 <= case["split"]["data_fraction"] <= 1
    env = report["environment"]
    assert env["cpu"]["usable_cpus"] >= 1 and "avx512_bf16" in env["cpu"]["isa"]
    assert env["versions"]["torch"] == torch.__version__.split("+")[0]
    text = (out / "report.md").read_text()
    assert report["tag"] in text and "train/tiny/text+image/concat-mlp" in text


@pytest.mark.slow
def test_lever_cases_pair_each_lever_on_with_it_off(demo_shards, tmp_path):
    out = tmp_path / "levers"
    assert main(["bench", *FAST, "--cases", "lever", "--data", str(demo_shards), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    validate(report)
    cases = {c["lever"]: c for c in report["cases"]}
    assert set(cases) == {"cache", "grad-ckpt", "fused-adamw", "precision"}
    for lever, case in cases.items():
        assert case["name"] == f"lever/{lever}/tiny/text+image"
        assert case["ratio"]["median"] > 0 and case["series"]["baseline"]["median"] > 0
    assert cases["cache"]["cache_build_s"] > 0
    assert cases["cache"]["samples_per_repeat"] == DatasetInfo.load(demo_shards).count("train")
    losses = cases["cache"]["losses"]  # one epoch from the same start through either path: the same training
    assert losses["mmfuse"] == pytest.approx(losses["baseline"], rel=1e-4) and math.isfinite(losses["mmfuse"])
    quality = cases["precision"]["quality"]  # bf16 vs fp32 from the same start on the same batches
    assert (quality["mmfuse"]["precision"], quality["baseline"]["precision"]) == ("bf16", "fp32")
    for run in (quality["mmfuse"], quality["baseline"]):
        assert math.isfinite(run["val_loss"]) and 0 <= run["val_accuracy"] <= 1
        assert run["train_loss_last"] < run["train_loss_first"]  # both learn on the batches they see
    assert quality["val_accuracy_delta"] == pytest.approx(
        quality["mmfuse"]["val_accuracy"] - quality["baseline"]["val_accuracy"], abs=1e-3)
    text = (out / "report.md").read_text()
    assert "lever/cache/tiny/text+image" in text and "lever/precision/tiny/text+image" in text
    assert "Precision: bf16 autocast vs fp32" in text


def test_schema_validator_names_broken_fields(tiny_report):
    _, report = tiny_report
    broken = copy.deepcopy(report)
    del broken["calibration"]["drift"]
    broken["cases"][0]["series"]["mmfuse"]["median"] = "fast"
    with pytest.raises(ConfigError, match=r"calibration\.drift: missing.*cases\[0\]\.series\.mmfuse\.median"):
        validate(broken)
    wrong_version = dict(report, schema="mmfuse-bench/0")
    with pytest.raises(ConfigError, match="mmfuse-bench/1"):
        validate(wrong_version)


def test_compare_prints_ratios(tiny_report, tmp_path, capsys):
    out, report = tiny_report
    faster = copy.deepcopy(report)
    for case in faster["cases"]:
        case["series"]["mmfuse"]["median"] *= 2
    (tmp_path / "b.json").write_text(json.dumps(faster))
    assert main(["bench", "--compare", str(out / "report.json"), str(tmp_path / "b.json")]) == 0
    printed = capsys.readouterr().out
    for case in report["cases"]:
        assert case["name"] in printed
    assert printed.count(" 2.000 ") == len(report["cases"])
    assert "2.000" in format_comparison(report, faster)


def test_raw_decode_yields_the_loaders_batches(demo_shards):
    info = DatasetInfo.load(demo_shards)
    model = create_model_and_task(ModelConfig(["text", "image"], build_cases(BenchConfig(preset="tiny"))[0].encoders(),
                                    labels=list(info.labels)))[0]
    pre = model.preprocessors()
    ours = list(build_pipeline(info, "val", pre, 8))
    raw = list(raw_batches(info, "val", pre, 8))
    assert len(ours) == len(raw) > 1
    for a, b in zip(ours, raw, strict=True):
        assert a["key"] == b["key"]
        for k in ("label", "text_ids", "text_mask", "present_text", "present_image"):
            assert torch.equal(a[k], b[k]), k
        torch.testing.assert_close(a["image"], b["image"])


def test_train_case_times_the_trainers_own_step(demo_shards, monkeypatch):
    calls = []
    original = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self, batch: calls.append(1) or original(self, batch))
    cfg = BenchConfig(preset="tiny", repeats=3, warmup=1, min_time=0, cases=["train"], modalities=["text"])
    info = DatasetInfo.load(demo_shards)
    (spec,) = build_cases(cfg)
    result = RUNNERS["train"](Context(cfg, torch.device("cpu"), "fp32", info), spec)
    steps = result["steps_per_repeat"]
    # warm-up + sizing step + repeats, then the loader-fed Trainer.steps pass
    assert len(calls) == 1 + 1 + 3 * steps + result["split"]["steps"]
    assert len(result["series"]["mmfuse"]["values"]) == len(result["series"]["baseline"]["values"]) == 3


def test_build_cases_overrides_and_errors():
    cases = build_cases(BenchConfig(modalities=["image"], fusion="gated", batch_size=4))
    demo = [c for c in cases if c.towers == "demo" and c.kind == "train"]
    assert [c.name for c in demo] == ["train/demo/image/gated"] and all(c.batch_size == 4 for c in cases)
    assert any(c.towers == "vit-s" for c in cases)  # the MFU cases stay
    with pytest.raises(ConfigError, match="unknown bench case"):
        BenchConfig(cases=["speed"])
    with pytest.raises(ConfigError, match="no demo tower for modality video"):
        build_cases(BenchConfig(modalities=["video"]))
    audio = build_cases(BenchConfig(modalities=["text", "image", "audio"], cases=["train"]))
    assert "train/demo/text+image+audio/concat-mlp" in [c.name for c in audio]
    precision = build_cases(BenchConfig(cases=["lever"], only=["precision"]))  # one per tower family
    assert [c.name for c in precision] == ["lever/precision/demo/text+image", "lever/precision/bert-small/text@128tok",
                                           "lever/precision/vit-s/image", "lever/precision/effnet-lite0/image"]
    layout = build_cases(BenchConfig(cases=["lever"], only=["channels-last"]))  # NHWC vs NCHW on the CNN tower
    assert [c.name for c in layout] == ["lever/channels-last/effnet-lite0/image"]
    with pytest.raises(ConfigError, match="no default bench case of kind lever has a name containing fp8"):
        build_cases(BenchConfig(cases=["lever"], only=["fp8"]))


def test_a_machine_without_matplotlib_still_gets_json_and_markdown(tiny_report, tmp_path, monkeypatch):
    def no_matplotlib(*args):
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")

    monkeypatch.setattr("mmfuse.bench.report.write_plots", no_matplotlib)
    _, report = tiny_report
    write_report(report, tmp_path / "out")
    assert "Not drawn: matplotlib is not installed" in (tmp_path / "out" / "report.md").read_text()
    assert load_report(tmp_path / "out" / "report.json") == report


def test_gpu_preset_cases_and_a_gpu_sized_calibration():
    cases = build_cases(BenchConfig(preset="gpu", cases=["loader", "encode", "train", "embed"]))
    names = [c.name for c in cases]
    assert {"encode/bert-base/text@128tok", "encode/vit-b16/image", "train/bert-base/text/concat-mlp@128tok",
            "train/vit-b16/image/concat-mlp", "train/bert-base+vit-b16/text+image/concat-mlp@128tok"} <= set(names)
    assert all(c.kind != "loader" and c.batch_size >= 128 for c in cases)  # the loader case is a CPU measurement
    assert all(c.encoders()[m]["pretrained"] is False for c in cases for m in c.modalities)  # nothing downloads
    assert calibration_size(torch.device("cuda"), tiny=False) == 8192
    assert calibration_size(torch.device("cpu"), tiny=False) == 2048
    assert calibration_size(torch.device("cuda"), tiny=True) == 256


@pytest.mark.slow
def test_gpu_preset_towers_are_bert_base_and_vit_b16_shaped(demo_shards):
    """One encode of each GPU tower on the CPU at batch 1: the FLOPs of BERT-base at 128 tokens and of ViT-B/16."""
    cpu = torch.device("cpu")
    cfg = BenchConfig(preset="gpu", cases=["encode"], device="cpu", precision="fp32", repeats=1, warmup=0,
                      min_time=0)
    ctx = Context(cfg, cpu, "fp32", DatasetInfo.load(demo_shards))
    gflops = {}
    for spec in build_cases(cfg):
        result = RUNNERS["encode"](ctx, replace(spec, batch_size=1))
        gflops[spec.towers] = result["flops_per_sample"] / 1e9
    # forward, 2 FLOPs per multiply-add: BERT-base ~ 2 x 85M weights x 128 tokens + attention; ViT-B/16 ~ 2 x 17.6 GMAC
    assert 20 < gflops["bert-base"] < 25 and 33 < gflops["vit-b16"] < 37, gflops


def test_flop_count_includes_cpu_attention_and_summary():
    q = torch.randn(2, 4, 16, 8, requires_grad=True)
    flops = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward())
    # forward 2 matmuls of (16x8)@(8x16) per head: 2*2*16*16*8 per (batch, head); backward 2.5x forward
    assert flops == 2 * 4 * (2 * 2 * 16 * 16 * 8) * 7 // 2
    stats = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert stats["median"] == 3.0 and stats["q1"] == 2.0 and stats["q3"] == 4.0


def test_cli_rejects_bad_options(capsys):
    assert main(["bench", "--cases", "nope"]) == 2
    assert "unknown bench case" in capsys.readouterr().err


@pytest.mark.slow
def test_text_embed_case_compares_with_sentence_transformers(demo_shards, tmp_path):
    pytest.importorskip("sentence_transformers")
    out = tmp_path / "text-embed"
    assert main(["bench", *FAST, "--cases", "text-embed", "--data", str(demo_shards), "--out", str(out)]) == 0
    report = load_report(out / "report.json")
    (case,) = report["cases"]
    assert case["name"] == "text-embed/tiny/text"
    assert set(case["series"]) == {"mmfuse", "baseline", "bf16", "int8", "int8-all", "onnx", "onnx-int8"}
    assert case["parity"]["mmfuse_vs_baseline"]["min"] > 0.9999 and case["parity"]["mmfuse_vs_baseline"]["n"] == 64
    assert case["parity"]["int8_vs_mmfuse"]["min"] >= 0.99 and case["parity"]["bf16_vs_mmfuse"]["min"] >= 0.99
    assert case["parity"]["onnx_vs_mmfuse"]["min"] > 0.9999 and case["parity"]["onnx_vs_baseline"]["min"] > 0.9999
    for name in ("int8-all", "onnx-int8"):  # measured candidates: parity reported, whatever it is
        assert 0 < case["parity"][f"{name}_vs_mmfuse"]["mean"] <= 1.0 + 1e-6
    assert case["ratio"]["median"] > 0 and case["ratios"]["int8/mmfuse"]["median"] > 0
    assert set(case["ratios"]) == {f"{n}/{ref}" for n in ("bf16", "int8", "int8-all", "onnx", "onnx-int8")
                                   for ref in ("mmfuse", "baseline")}
    assert case["backends"]["onnx_fused_ops"]["Attention"] == 2 and case["baseline_batch_size"] == 32
    md = (out / "report.md").read_text()
    assert "## Serving backends" in md and "| `text-embed/tiny/text` | tiny random-init BERT | onnx |" in md


@pytest.mark.slow
def test_embed_backends_case_times_fp32_int8_and_onnx_with_parity(demo_shards, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "backends"
    assert main(["bench", *FAST, "--cases", "embed-backends", "--data", str(demo_shards), "--out", str(out)]) == 0
    (case,) = load_report(out / "report.json")["cases"]
    assert case["name"] == "embed-backends/tiny/text+image/concat-mlp"
    assert set(case["series"]) == {"mmfuse", "bf16", "int8", "int8-all", "onnx", "onnx-int8"} and case["ratio"] is None
    assert case["parity"]["onnx_vs_mmfuse"]["min"] > 0.9999 and case["parity"]["int8_vs_mmfuse"]["min"] >= 0.99
    assert case["parity"]["bf16_vs_mmfuse"]["min"] >= 0.99
    assert case["parity"]["onnx_vs_mmfuse"]["n"] == 64 and case["ratios"]["onnx/mmfuse"]["median"] > 0
    assert "| `embed-backends/tiny/text+image/concat-mlp` | random-init tiny towers | int8 |" in (
        out / "report.md").read_text()
