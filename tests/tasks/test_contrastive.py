"""Contrastive alignment: mask-aware InfoNCE / SigLIP, the global-batch gather under 2 gloo ranks, the task end to
end (retrieval well above chance on the caption-colour demo) and as an auxiliary loss."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from mmfuse.alignment import Alignment, infonce_loss, siglip_loss
from mmfuse.config import resolve
from mmfuse.data.demo import DemoSpec, build_demo
from mmfuse.errors import ConfigError
from mmfuse.finetune import finetune
from mmfuse.inference import load
from mmfuse.retrieval import chance_recall


def pairs(n: int = 6, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(torch.randn(n, d, generator=g), dim=-1))


def test_infonce_matches_clip_and_ignores_incomplete_pairs():
    a, b = pairs()
    scale = torch.tensor(10.0)
    keep = torch.tensor([True, True, False, True, True, True])
    ka, kb = a[keep], b[keep]
    logits = scale * ka @ kb.T
    clip = (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5))) / 2
    torch.testing.assert_close(infonce_loss(a, b, keep, scale), clip)
    b_changed = b.clone()
    b_changed[2] = -b[2]  # the excluded pair's embedding changes nothing
    torch.testing.assert_close(infonce_loss(a, b_changed, keep, scale), clip)


def test_siglip_matches_its_definition():
    a, b = pairs()
    keep = torch.ones(6, dtype=torch.bool)
    scale, bias = torch.tensor(10.0), torch.tensor(-5.0)
    logits = scale * a @ b.T + bias
    expected = sum(-F.logsigmoid((1.0 if i == j else -1.0) * logits[i, j]) for i in range(6) for j in range(6)) / 6
    torch.testing.assert_close(siglip_loss(a, b, keep, scale, bias), expected)


@pytest.mark.parametrize("loss", ["infonce", "siglip"])
def test_alignment_learns_its_temperature_and_survives_an_empty_batch(loss):
    align = Alignment(["text", "image"], loss)
    a, b = pairs()
    pooled = {"text": a.clone().requires_grad_(), "image": b.clone().requires_grad_()}
    present = {"text": torch.ones(6, dtype=torch.bool), "image": torch.zeros(6, dtype=torch.bool)}
    empty = align(pooled, present)  # no complete pair: zero, still connected to every input
    empty.backward()
    assert empty.item() == 0.0 and align.logit_scale.grad is not None
    present["image"] = torch.ones(6, dtype=torch.bool)
    align(pooled, present).backward()
    assert align.logit_scale.grad.abs().item() > 0
    if loss == "siglip":
        assert align.logit_bias.grad.abs().item() > 0
    with pytest.raises(ConfigError, match="contrastive_loss must be one of"):
        Alignment(["text", "image"], "triplet")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, a: torch.Tensor, b: torch.Tensor, keep: torch.Tensor, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        rows = slice(0, 5) if rank == 0 else slice(5, 8)  # uneven shares: 5 and 3 rows
        for loss in LOSSES:
            la, lb = a[rows].clone().requires_grad_(), b[rows].clone().requires_grad_()
            value = LOSSES[loss](la, lb, keep[rows])
            (value * keep[rows].sum()).backward()  # the sum form: the ranks' sums add up to the global one
            out[(loss, rank)] = (value.item(), keep[rows].sum().item(), la.grad.clone(), lb.grad.clone())
    finally:
        dist.destroy_process_group()


LOSSES = {"infonce": lambda a, b, keep: infonce_loss(a, b, keep, torch.tensor(10.0)),
          "siglip": lambda a, b, keep: siglip_loss(a, b, keep, torch.tensor(10.0), torch.tensor(-5.0))}


def test_two_ranks_gather_negatives_and_gradients_of_the_global_batch():
    """Each of 2 gloo ranks holds part of the batch (5 and 3 rows, some pairs incomplete): their losses and input
    gradients equal one process's over the whole batch, so negatives and gradients span the global batch."""
    a, b = pairs(8)
    keep = torch.tensor([True, True, False, True, True, True, True, False])
    out = mp.Manager().dict()
    mp.spawn(_rank, args=(_free_port(), a, b, keep, out), nprocs=2, join=True)
    for loss, fn in LOSSES.items():
        ga, gb = a.clone().requires_grad_(), b.clone().requires_grad_()
        full = fn(ga, gb, keep)
        (full * keep.sum()).backward()
        total = sum(out[(loss, r)][0] * out[(loss, r)][1] for r in (0, 1))
        assert total == pytest.approx(full.item() * keep.sum().item(), rel=1e-5), loss
        torch.testing.assert_close(torch.cat([out[(loss, 0)][2], out[(loss, 1)][2]]), ga.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(torch.cat([out[(loss, 0)][3], out[(loss, 1)][3]]), gb.grad, atol=1e-5, rtol=1e-4)


CAPTIONED = DemoSpec(train=320, val=64, test=64, image_size=32, shard_size=64, caption_colour=True)
SMALL = {"dim": 32, "encoders": {"text": {"name": "tiny-text", "kwargs": {"width": 32, "layers": 1, "heads": 2}},
                                 "image": {"name": "tiny-image",
                                           "kwargs": {"width": 32, "layers": 1, "heads": 2, "image_size": 32}}}}


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    return build_demo(tmp_path_factory.mktemp("captioned") / "demo", CAPTIONED)


def run(data, out, epochs: int, max_steps: int | None = None, **model) -> dict:
    config = resolve({"model": {**SMALL, **model}, "data": {"path": str(data), "batch_size": 32},
                      "train": {"epochs": epochs, "progress": False, "lr": 3e-3, "max_steps": max_steps},
                      "out": str(out)})
    return finetune(config, echo=lambda *_: None)


@pytest.mark.slow
def test_a_contrastive_run_retrieves_images_from_text_well_above_chance(captioned, tmp_path):
    summary = run(captioned, tmp_path / "run", 8, task="contrastive")
    test = summary["test"]
    chance = chance_recall(test["pairs"], 5)
    assert summary["task"] == "contrastive" and test["pairs"] == 64 and summary["labels"] == []
    assert test["text_to_image_recall@5"] >= 2.5 * chance, test
    assert test["text_to_image_ndcg@10"] > 0 and test["mean_recall"] == summary["test"]["mean_recall"]
    predictor = load(tmp_path / "run")
    records = [{"text": "a red toy made of oak"}, {"text": "a blue toy made of steel"}]
    assert predictor.embed(records, normalize=True, modality="text").shape == (2, 32)
    with pytest.raises(ConfigError, match="predicts no labels"):
        predictor.predict(records)


def test_a_siglip_contrastive_run_logs_retrieval_metrics(captioned, tmp_path):
    summary = run(captioned, tmp_path / "con", 1, 3, task="contrastive", contrastive_loss="siglip")
    record = summary["epochs"][0]
    recalls = {f"{a}_to_{b}_recall@{k}": record[f"val_{a}_to_{b}_recall@{k}"]
               for a, b in (("text", "image"), ("image", "text")) for k in (1, 5, 10)}
    assert math.isfinite(record["train_loss"])
    assert record["val_mean_recall"] == pytest.approx(sum(recalls.values()) / 6)  # the mean of both directions
    for a, b in (("text", "image"), ("image", "text")):  # recall@k cannot fall as k grows; 64 pairs: k/64 at chance
        r1, r5, r10 = (recalls[f"{a}_to_{b}_recall@{k}"] for k in (1, 5, 10))
        assert r1 <= r5 <= r10 and r10 > 0, recalls
    assert "val_text_to_image_recall@10" in record and "val_image_to_text_ndcg@10" in record


def test_contrastive_alignment_as_an_auxiliary_loss(captioned, tmp_path):
    aux = run(captioned, tmp_path / "aux", 1, 3, contrastive_weight=0.5)
    assert aux["task"] == "classification" and set(aux["val"]) == {"accuracy", "macro_f1"}
    assert "val_text_to_image_recall@5" in aux["epochs"][0] and aux["test"]["count"] == 64
    plain = run(captioned, tmp_path / "plain", 1, 3)
    assert aux["epochs"][0]["train_loss"] != pytest.approx(plain["epochs"][0]["train_loss"])
    assert "val_text_to_image_recall@5" not in plain["epochs"][0]
    names = set(load(tmp_path / "aux").model.state_dict())
    assert "alignment.logit_scale" in names and "head.linear.weight" in names


@pytest.mark.slow
def test_two_process_contrastive_run_with_uneven_shards(captioned, tmp_path):
    """torchrun, 2 gloo ranks: 5 train shards of 64 split 3 / 2, so the ranks hold 6 and 4 batches of 32. The
    alignment's all_gather keeps them in step: both train 4 steps per epoch and the run finishes."""
    import json
    import subprocess
    import sys

    out = tmp_path / "ddp"
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m", "mmfuse",
         "finetune", "--data", str(captioned), "--out", str(out), "--task", "contrastive", "--epochs", "2",
         "--batch-size", "64", "--no-progress", "--set", "model.dim=32", "--set", "model.encoders.text.kwargs.width=32",
         "--set", "model.encoders.text.kwargs.layers=1", "--set", "model.encoders.image.kwargs.width=32",
         "--set", "model.encoders.image.kwargs.layers=1", "--set", "model.encoders.image.kwargs.image_size=32"],
        capture_output=True, text=True)
    assert launched.returncode == 0, launched.stderr[-3000:]
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 8
    assert [e["train_samples"] for e in summary["epochs"]] == [256, 256]
    assert summary["test"]["pairs"] == 64 and 0.0 <= summary["test"]["mean_recall"] <= 1.0


def test_lockstep_moves_empty_batches_counts_onto_real_ones():
    from mmfuse.train.distributed import DistEnv, lockstep

    batches = [{"key": [], "skipped": {"image: cannot decode": 1}, "ignored": {}},
               {"key": ["a", "b"], "skipped": {"label: missing": 1}, "ignored": {}},
               {"key": [], "skipped": {"image: cannot decode": 2}, "ignored": {"pickle member .pyd": 1}}]
    out = list(lockstep(batches, DistEnv()))
    assert [b["key"] for b in out] == [["a", "b"], []]
    assert out[0]["skipped"] == {"image: cannot decode": 1, "label: missing": 1}
    assert out[1]["skipped"] == {"image: cannot decode": 2} and out[1]["ignored"] == {"pickle member .pyd": 1}
