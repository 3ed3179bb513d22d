"""The interactions task: pair files, the demo's users, the in-batch loss, cold-start metrics, the CLI end to end."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mmfuse
from mmfuse.cli import main
from mmfuse.data.demo import LABELS, DemoSpec, build_demo, make_samples
from mmfuse.data.demo_manifest import write_demo_manifest
from mmfuse.data.demo_users import user_tastes
from mmfuse.data.info import DatasetInfo
from mmfuse.data.loader import make_loader, read_records
from mmfuse.data.pairs import attach_pairs, read_pairs
from mmfuse.errors import ConfigError, DataError
from mmfuse.tasks.interactions import cold_start_metrics, interaction_loss, sample_positive

SPEC = DemoSpec(train=96, val=32, test=40, image_size=32, shard_size=32, interactions=True, users=24)
TINY_FLAGS = ["--set", "model.dim=32", "--set", "model.encoders.text.kwargs.width=16",
              "--set", "model.encoders.image.kwargs.width=16", "--set", "model.encoders.image.kwargs.image_size=32",
              "--batch-size", "16", "--no-progress"]


@pytest.fixture(scope="module")
def interaction_shards(tmp_path_factory):
    return build_demo(tmp_path_factory.mktemp("data") / "demo", SPEC)


def unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


# -- the loss --------------------------------------------------------------------------------------------------
U = unit([1.0, 0.0], [0.0, 1.0], [1.0, 1.0])
V = unit([0.9, 0.1], [0.2, 0.8], [0.5, -0.5])


def test_in_batch_softmax_equals_hand_computation():
    users = torch.tensor([[0, -1], [1, -1], [2, -1]])
    loss = interaction_loss(U, V, users, torch.tensor([0, 1, 2]), temperature=0.5)
    s = (U @ V.T).tolist()
    expected = sum(-math.log(math.exp(s[i][i] / 0.5) / sum(math.exp(s[i][j] / 0.5) for j in range(3)))
                   for i in range(3)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_duplicate_positive_is_masked_not_a_negative():
    users = torch.tensor([[0, -1], [0, 1], [2, -1]])  # user 0 also liked item 1
    loss = interaction_loss(U, V, users, torch.tensor([0, 1, 2]), temperature=0.5)
    s = (U @ V.T).tolist()

    def ce(i: int, columns: list[int]) -> float:
        return -math.log(math.exp(s[i][i] / 0.5) / sum(math.exp(s[i][j] / 0.5) for j in columns))

    expected = (ce(0, [0, 2]) + ce(1, [0, 1, 2]) + ce(2, [0, 1, 2])) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    unmasked = interaction_loss(U, V, torch.tensor([[0, -1], [1, -1], [2, -1]]), torch.tensor([0, 1, 2]), 0.5)
    assert loss.item() < unmasked.item()  # the masked column only ever added to the denominator


def test_bpr_against_the_unmasked_in_batch_negatives():
    users = torch.tensor([[0, -1], [0, 1], [2, -1]])
    loss = interaction_loss(U, V, users, torch.tensor([0, 1, 2]), temperature=0.5, loss="bpr")
    s = (U @ V.T).tolist()
    pairs = [(0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]  # (0, 1) masked: user 0 liked item 1 too
    expected = sum(-math.log(1 / (1 + math.exp(-(s[i][i] - s[i][j]) / 0.5))) for i, j in pairs) / len(pairs)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_items_without_users_take_no_part_and_a_batch_of_them_gives_zero_with_gradients():
    items = V.clone().requires_grad_(True)
    loss = interaction_loss(U, items, torch.tensor([[0], [-1], [2]]), torch.tensor([0, -1, 2]), 0.5)
    s = (U @ V.T).tolist()
    expected = sum(-math.log(math.exp(s[i][i] / 0.5) / sum(math.exp(s[i][j] / 0.5) for j in (0, 2)))
                   for i in (0, 2)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    empty = interaction_loss(U, items, torch.full((3, 1), -1), torch.full((3,), -1), 0.5)
    empty.backward()
    assert empty.item() == 0.0 and items.grad is not None


def test_sample_positive_draws_each_items_users_uniformly():
    torch.manual_seed(1)
    users = torch.tensor([[3, 5, 7], [4, -1, -1], [-1, -1, -1]])
    draws = torch.stack([sample_positive(users) for _ in range(600)])  # (600, 3)
    assert set(draws[:, 0].tolist()) == {3, 5, 7}
    counts = torch.bincount(draws[:, 0])[[3, 5, 7]]
    assert counts.min() > 150  # ~200 each
    assert set(draws[:, 1].tolist()) == {4} and set(draws[:, 2].tolist()) == {-1}


# -- cold-start metrics ----------------------------------------------------------------------------------------
def test_cold_start_metrics_rank_with_the_mean_of_training_items():
    reference = [(unit([1.0, 0.0], [0.8, 0.2], [0.0, 1.0]), torch.tensor([[0, -1], [0, -1], [1, 2]]))]
    # held-out: item 0 is like user 0's items, item 1 like user 1's; user 2 has no held-out item
    evaluated = [(unit([0.0, 1.0], [1.0, 0.1], [0.7, 0.7]), torch.tensor([[1], [0], [-1]]))]
    out = cold_start_metrics(reference, evaluated, users=4, ks=(1, 3))
    assert out["users"] == 2 and out["items"] == 3  # user 3: no training item; user 2: nothing held out
    assert out["recall@1"] == 1.0 and out["ndcg@1"] == 1.0 and out["recall@3"] == 1.0
    assert out["chance_recall@1"] == pytest.approx(1 / 3)
    swapped = [(evaluated[0][0], torch.tensor([[0], [1], [-1]]))]
    assert cold_start_metrics(reference, swapped, users=4, ks=(1,))["recall@1"] == 0.0


# -- pair files ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, suffix, message", [
    ("user,item\nu1,a\nu2,\n", ".csv", "pairs.csv:3: item: missing value"),
    ("user,item\nu1,a\n,b\n", ".csv", "pairs.csv:3: user: missing value"),
    ('{"user": "u1", "item": "a"}\n{"user": "u2", "item": \n', ".jsonl", "pairs.jsonl:2: invalid JSON"),
    ("user,item\n", ".csv", "holds no pairs"),
    ("user,item\n", ".txt", "expected a .jsonl or .csv file"),
])
def test_a_bad_pair_file_is_a_one_line_error_naming_file_line_and_field(tmp_path, text, suffix, message):
    path = tmp_path / f"pairs{suffix}"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        read_pairs(path)
    assert "\n" not in str(err.value)


def test_unknown_items_and_duplicate_pairs_are_counted_not_lost(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [("u1", "a"), ("u2", "a"), ("u1", "zz"), ("u1", "a"), ("u3", "b"), ("u2", "a")]
    path.write_text("".join(json.dumps({"user": u, "item": i, "weight": 1}) + "\n" for u, i in rows))
    users, rejects, report = attach_pairs(read_pairs(path), {"a", "b", "c"})
    assert users == {"a": ["u1", "u2"], "b": ["u3"]}
    assert report.read == 6 and report.attached == 3 and report.users == 3
    assert report.rejected == {"unknown item": 1, "duplicate pair": 2}
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (3, "unknown item"), (4, "duplicate pair (first on line 1)"), (6, "duplicate pair (first on line 2)")]


def test_shard_with_interactions_attaches_users_and_reports_rejects(tmp_path, capsys):
    manifest = write_demo_manifest(tmp_path / "cat", 30, users=12)
    pairs = manifest.parent / "pairs.csv"
    lines = pairs.read_text().splitlines()
    lonely = "item-000007"
    kept = [line for line in lines if not line.endswith(f",{lonely}")]
    pairs.write_text("\n".join([*kept, "user-00001,no-such-item", kept[1]]) + "\n")
    broken = manifest.parent / "media" / "item-000003.png"  # an item refused for its media: its pairs are counted
    broken.write_bytes(b"not an image")
    dropped = [line for line in kept[1:] if line.endswith(",item-000003")]
    kept = [line for line in kept if line not in dropped]
    assert dropped
    out = tmp_path / "shards"
    assert main(["shard", "--manifest", str(manifest), "--text", "title", "--interactions", str(pairs),
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    attached = len(kept) - 1
    assert f"{attached} of {attached + 2 + len(dropped)} interaction pairs attached" in printed
    assert f"unknown item x1, duplicate pair x1, pair of a refused item x{len(dropped)}" in printed
    assert "users: no interactions in the pair file x1" in printed
    info = DatasetInfo.load(out)
    assert info.task == "interactions" and info.users == sorted({line.split(",")[0] for line in kept[1:] + dropped})
    assert [r["reason"] for r in map(json.loads, (out / "pair_rejects.jsonl").read_text().splitlines())] == [
        "unknown item", "duplicate pair (first on line 2)"]
    assert [r["key"] for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())] == [
        "item-000003", lonely]
    expected = {}
    for line in kept[1:]:
        user, item = line.split(",")
        expected.setdefault(item, set()).add(info.users.index(user))
    from mmfuse.encoders import create_encoder

    seen = {}
    for split in info.splits:
        for batch in make_loader(info, split, {"text": create_encoder("tiny-text").preprocessor}, 8):
            for key, row in zip(batch["key"], batch["users"], strict=True):
                seen[key] = {u for u in row.tolist() if u >= 0}
    assert seen == expected


def test_shard_needs_a_pair_file_for_interactions(tmp_path, capsys):
    manifest = write_demo_manifest(tmp_path / "cat", 4)
    assert main(["shard", "--manifest", str(manifest), "--text", "title", "--task", "interactions",
                 "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "needs --interactions" in capsys.readouterr().err


# -- the demo --------------------------------------------------------------------------------------------------
def test_demo_users_are_deterministic_and_like_their_combinations(interaction_shards, tmp_path):
    again = build_demo(tmp_path / "again", SPEC)
    assert (again / "pairs.csv").read_text() == (interaction_shards / "pairs.csv").read_text()
    info = DatasetInfo.load(interaction_shards)
    assert info.task == "interactions" and len(info.users) == 24
    labels, offset = {}, 0
    for split, count in (("train", SPEC.train), ("val", SPEC.val), ("test", SPEC.test)):
        labels.update({s["__key__"]: LABELS[int(s["cls"])] for s in make_samples(SPEC, split, count, offset)})
        offset += count
    tastes = user_tastes(SPEC.seed, SPEC.users)
    rows = [line.split(",") for line in (interaction_shards / "pairs.csv").read_text().splitlines()[1:]]
    liked = [LABELS.index(labels[item]) in tastes[info.users.index(user)] for user, item in rows]
    assert len(rows) >= len(labels) and 0.8 < sum(liked) / len(liked) < 1.0  # 10% noise
    # the items are the demo's own: the users come from streams of their own
    plain = next(make_samples(DemoSpec(image_size=32), "train", 1, 0))
    with_users = next(make_samples(SPEC, "train", 1, 0))
    assert plain["txt"] == with_users["txt"] and plain["jpg"] == with_users["jpg"] and "usr" in with_users


def test_demo_manifest_writes_pairs_beside_it(tmp_path):
    manifest = write_demo_manifest(tmp_path, 12, users=8)
    rows = (tmp_path / "pairs.csv").read_text().splitlines()
    keys = {json.loads(line)["key"] for line in manifest.read_text().splitlines()}
    assert rows[0] == "user,item" and {r.split(",")[1] for r in rows[1:]} == keys


# -- end to end ------------------------------------------------------------------------------------------------
def test_finetune_interactions_cli_reports_recall_and_the_run_embeds(interaction_shards, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["finetune", "--task", "interactions", "--data", str(interaction_shards), "--out", str(run),
                 "--epochs", "1", *TINY_FLAGS]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics["test"]
    assert metrics["task"] == "interactions" and test["count"] == 40 and test["items"] == 40
    assert f"test recall@10 (text+image, best epoch 1): {test['recall@10']:.4f}" in printed
    assert 0 < test["users"] <= 24 and test["chance_recall@10"] > 0
    for prefix in ("", "user_"):  # recall@K cannot fall as K grows (K = 5, 10, 20 of the 40 held-out items)
        assert test[f"{prefix}recall@5"] <= test[f"{prefix}recall@10"] <= test[f"{prefix}recall@20"], test
    assert test["chance_recall@5"] < test["chance_recall@10"] < test["chance_recall@20"], test
    predictor = mmfuse.load(run)
    records = list(read_records(DatasetInfo.load(interaction_shards), "test"))[:5]
    assert predictor.embed(records, normalize=True).shape == (5, 32)
    with pytest.raises(ConfigError, match="predicts no labels"):
        predictor.predict(records)
    with pytest.raises(ConfigError, match="predicts no labels"):
        predictor.predict_proba(records)
    out = tmp_path / "vectors"
    assert main(["embed", "--run", str(run), "--shards", str(interaction_shards), "--splits", "test",
                 "--out", str(out), "--no-progress"]) == 0
    np.testing.assert_allclose(np.load(out / "fused_feat.npy"), predictor.embed(
        list(read_records(DatasetInfo.load(interaction_shards), "test"))), atol=1e-5)


def test_bad_task_options_are_config_errors(interaction_shards, tmp_path, capsys):
    code = main(["finetune", "--task", "interactions", "--data", str(interaction_shards), "--out",
                 str(tmp_path / "r"), "--set", "model.task_kwargs.loss=hinge", *TINY_FLAGS])
    assert code == 2 and "model.task_kwargs.loss must be one of softmax, bpr" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_gloo_interactions_run(tmp_path):
    import subprocess
    import sys

    # 4 train shards of 40: the ranks train in lock-step, an even share keeps every sample in the epoch
    data = build_demo(tmp_path / "demo", DemoSpec(train=160, val=64, test=64, image_size=32, shard_size=40,
                                                  interactions=True, users=24))
    flags = ["finetune", "--task", "interactions", "--data", str(data), "--epochs", "2", *TINY_FLAGS]
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                               "-m", "mmfuse", *flags, "--out", str(tmp_path / "two")], capture_output=True, text=True)
    assert launched.returncode == 0, launched.stderr[-2000:]
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and [e["train_samples"] for e in metrics["epochs"]] == [160, 160]
    # both ranks' test items and both ranks' training items (the users' profiles) were gathered
    assert metrics["test"]["items"] == metrics["test"]["count"] == 64 and metrics["test"]["users"] >= 20
    assert all(math.isfinite(e["train_loss"]) for e in metrics["epochs"])


@pytest.mark.slow
def test_tuned_item_vectors_beat_frozen_untuned_towers_on_recall(tmp_path):
    """The must-show figure, small: same protocol (user = mean of their train items' exported vectors, cold-start
    test items) for the frozen untuned towers and the tuned run; the run's own test metric is that protocol."""
    import csv

    from conftest import TINY_MODEL

    from mmfuse.config import resolve
    from mmfuse.finetune import finetune

    data = build_demo(tmp_path / "demo", DemoSpec(train=480, val=96, test=160, image_size=32, shard_size=64,
                                                  interactions=True, users=30))
    config = resolve({"model": {**TINY_MODEL, "modalities": "text,image", "task": "interactions"},
                      "data": {"path": str(data), "batch_size": 32},
                      "train": {"epochs": 8, "lr": 3e-3, "progress": False}, "out": str(tmp_path / "run")})
    summary = finetune(config, echo=lambda *_: None)
    info = DatasetInfo.load(data)
    index = {u: i for i, u in enumerate(info.users)}
    users: dict[str, list[int]] = {}
    with open(data / "pairs.csv", newline="") as f:
        for row in csv.DictReader(f):
            users.setdefault(row["item"], []).append(index[row["user"]])

    def chunks(predictor, split):
        records = list(read_records(info, split))
        lists = [users[r["key"]] for r in records]
        width = max(len(u) for u in lists)
        padded = torch.tensor([u + [-1] * (width - len(u)) for u in lists])
        return [(torch.from_numpy(predictor.embed(records, normalize=True)), padded)]

    untuned = tmp_path / "untuned.json"
    untuned.write_text(json.dumps({k: v for k, v in config.model.to_dict().items() if k != "labels"}))
    scores = {}
    for name, source in (("frozen", untuned), ("tuned", tmp_path / "run")):
        predictor = mmfuse.load(source)
        scores[name] = cold_start_metrics(chunks(predictor, "train"), chunks(predictor, "test"), len(info.users))
    frozen, tuned = scores["frozen"], scores["tuned"]
    assert tuned["recall@10"] == pytest.approx(summary["test"]["recall@10"], abs=1e-6)
    assert tuned["users"] == frozen["users"] == summary["test"]["users"] > 0
    assert tuned["recall@10"] >= frozen["recall@10"] + 0.05, (frozen, tuned)
    assert tuned["ndcg@10"] > frozen["ndcg@10"] and tuned["recall@10"] > 1.3 * tuned["chance_recall@10"]


def test_frozen_towers_with_the_feature_cache_still_carry_the_users(interaction_shards, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["finetune", "--task", "interactions", "--data", str(interaction_shards), "--out", str(run),
                 "--epochs", "1", "--freeze", "text,image", "--set", "model.task_kwargs.loss=bpr", *TINY_FLAGS]) == 0
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert test["items"] == 40 and test["users"] > 0 and "test recall@10" in capsys.readouterr().out


def _rank_loss(rank: int, port: int, out) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    users, items, u, drawn = _global_batch()
    rows = slice(2 * rank, 2 * rank + 2)
    out[rank] = interaction_loss(u[rows], items[rows], users[rows], drawn[rows], 0.5).item()
    dist.destroy_process_group()


def _global_batch():
    g = torch.Generator().manual_seed(3)
    items, u = F.normalize(torch.randn(4, 8, generator=g), dim=-1), F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    users = torch.tensor([[0, 1], [2, -1], [1, -1], [3, 0]])  # user 1 liked items 0 and 2: across the ranks
    return users, items, u, torch.tensor([1, 2, 1, 0])


@pytest.mark.slow
def test_under_ddp_each_rank_scores_against_the_global_batch_with_cross_rank_masking():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.get_context("spawn").Manager().dict()
    mp.spawn(_rank_loss, args=(port, out), nprocs=2)
    users, items, u, drawn = _global_batch()
    whole = interaction_loss(u, items, users, drawn, 0.5).item()
    assert (out[0] + out[1]) / 2 == pytest.approx(whole, rel=1e-5)


def test_init_from_an_interactions_run_keeps_user_vectors_by_name(interaction_shards, tmp_path):
    first = tmp_path / "first"
    assert main(["finetune", "--task", "interactions", "--data", str(interaction_shards), "--out", str(first),
                 "--max-steps", "2", *TINY_FLAGS]) == 0
    from mmfuse.checkpoint import load_checkpoint
    from mmfuse.train.init_from import init_from_run

    old, old_config, _ = load_checkpoint(first / "checkpoints" / "best")
    config = replace(old_config, labels=["user-new", *old_config.labels[::-1]])
    model, new_config, summary = init_from_run(first, config)
    assert summary["new"] == ["user-new"] and sorted(summary["kept"]) == sorted(old_config.labels)
    table, old_table = model.head.users.weight, old.head.users.weight
    for name in old_config.labels:
        assert torch.equal(table[new_config.labels.index(name)], old_table[old_config.labels.index(name)])
    assert new_config.labels[0] == "user-new" and table.shape[0] == len(old_config.labels) + 1


def test_fsdp_is_refused_with_a_config_error(interaction_shards):
    from conftest import TINY_MODEL

    from mmfuse.config import TrainConfig, resolve
    from mmfuse.tasks import create_model_and_task, task_class
    from mmfuse.train.distributed import DistEnv
    from mmfuse.train.trainer import Trainer

    config = resolve({"model": {**TINY_MODEL, "task": "interactions"}}).model
    config = task_class("interactions").prepare(config, DatasetInfo.load(interaction_shards))
    model, task = create_model_and_task(config)
    with pytest.raises(ConfigError, match="does not train under train.strategy=fsdp"):
        Trainer(model, task, TrainConfig(strategy="fsdp"), torch.device("cpu"), 1, DistEnv(world_size=2))
