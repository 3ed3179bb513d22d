from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from mmfuse.checkpoint import load_checkpoint, save_checkpoint
from mmfuse.data.info import DatasetInfo
from mmfuse.data.loader import make_loader
from mmfuse.errors import ConfigError
from mmfuse.precision import choose_precision, cpu_has_fast_bf16
from mmfuse.tasks import create_model_and_task
from mmfuse.train.optim import warmup_cosine
from mmfuse.train.trainer import Trainer


def setup(tiny_config, demo_shards, **train):
    info = DatasetInfo.load(demo_shards)
    model_cfg = replace(tiny_config.model, labels=info.labels)
    model, task = create_model_and_task(model_cfg)
    trainer = Trainer(model, task, replace(tiny_config.train, **train), torch.device("cpu"), total_steps=100)
    batches = list(make_loader(info, "train", model.preprocessors(), 16))
    return trainer, model_cfg, batches, info


def test_precision_is_chosen_by_hardware():
    cpu = torch.device("cpu")
    assert choose_precision(cpu, "auto") == ("bf16" if cpu_has_fast_bf16() else "fp32")
    assert choose_precision(cpu, "bf16") == "bf16"
    with pytest.raises(ConfigError, match="fp16 autocast is not supported on the CPU"):
        choose_precision(cpu, "fp16")


@pytest.mark.parametrize("fast", [False, True])
def test_auto_picks_bf16_on_a_cpu_only_for_models_with_a_wide_encoder(tiny_config, demo_shards, monkeypatch, fast):
    """bf16 autocast slows the tiny demo towers down and speeds up BERT-small / ViT-S (the bench's precision lever):
    `auto` decides by the widest encoder."""
    from mmfuse import precision

    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: fast)
    cpu = torch.device("cpu")

    def model_of_width(width: int) -> torch.nn.Module:
        model = torch.nn.Module()
        model.encoders = torch.nn.ModuleDict({"text": torch.nn.Linear(1, 1), "image": torch.nn.Linear(1, 1)})
        model.encoders["text"].width, model.encoders["image"].width = 16, width
        return model

    assert precision.BF16_MIN_WIDTH == 256
    assert choose_precision(cpu, "auto", model_of_width(255)) == "fp32"
    assert choose_precision(cpu, "auto", model_of_width(256)) == ("bf16" if fast else "fp32")
    assert choose_precision(cpu, "auto") == ("bf16" if fast else "fp32")  # no model: the hardware alone
    assert choose_precision(cpu, "bf16", model_of_width(16)) == "bf16"  # asked for: always
    trainer, *_ = setup(tiny_config, demo_shards)  # the tiny towers are 16 wide
    assert trainer.cfg.precision == "auto" and trainer.precision == "fp32"


def test_adamw_is_fused_on_cpu(tiny_config, demo_shards):
    trainer, *_ = setup(tiny_config, demo_shards)
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert trainer.optimizer.defaults["fused"] is True


def test_schedule_warms_up_then_decays_to_zero():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=20, warmup=0.1)
    lrs = []
    for _ in range(20):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == 0.5 and lrs[1] == 1.0 and lrs[3] < 1.0
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False)) and sched.get_last_lr()[0] == 0.0


def test_loss_goes_down_on_a_fixed_batch(tiny_config, demo_shards):
    trainer, _, batches, _ = setup(tiny_config, demo_shards, grad_clip=1.0)
    first = trainer.train_step(batches[0]).item()
    for _ in range(30):
        last = trainer.train_step(batches[0]).item()
    assert last < 0.5 * first
    # the model learned the batch: 16 samples of 6 classes (chance 1/6, the largest class of the batch far below
    # 3/4); with seed 0 (and seeds 1-3) it is 16/16 after 20 steps and 13-14/16 after 10, so 3/4 leaves a margin
    assert trainer.evaluate([batches[0]])["accuracy"] >= 0.75


def accumulated_and_big_batch_updates(tiny_config, demo_shards, precision: str) -> list[tuple[str, torch.Tensor,
                                                                                               torch.Tensor]]:
    """(name, update with grad_accum=2 over two micro-batches of 16, update of one batch of 32) per parameter."""
    trainer_a, cfg, batches, info = setup(tiny_config, demo_shards, grad_accum=2, grad_clip=0.0, precision=precision)
    model_b = copy.deepcopy(trainer_a.model)
    model_b.load_state_dict(trainer_a.model.state_dict())
    trainer_b = Trainer(model_b, trainer_a.task, replace(trainer_a.cfg, grad_accum=1), torch.device("cpu"),
                        total_steps=100)
    assert trainer_a.precision == trainer_b.precision == precision
    before = {name: p.detach().clone() for name, p in trainer_a.model.named_parameters()}
    for m in (trainer_a.model, trainer_b.model):
        m.eval()  # no dropout, so both see the same function
    big = next(iter(make_loader(info, "train", trainer_a.model.preprocessors(), 32)))
    trainer_a.train_step(batches[0])
    assert trainer_a.step == 0
    trainer_a.train_step(batches[1])
    trainer_b.train_step(big)
    assert trainer_a.step == trainer_b.step == 1
    return [(name, a.detach() - before[name], b.detach() - before[name])
            for (name, a), b in zip(trainer_a.model.named_parameters(), trainer_b.model.parameters(), strict=True)]


def test_gradient_accumulation_matches_one_big_batch(tiny_config, demo_shards):
    """Two micro-batches of 16 with grad_accum=2 give the same update as one batch of 32 (fp32: to 1e-5)."""
    for name, a, b in accumulated_and_big_batch_updates(tiny_config, demo_shards, "fp32"):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


def test_gradient_accumulation_under_bf16_autocast_matches_one_big_batch_within_bf16_rounding(tiny_config,
                                                                                              demo_shards):
    """bf16 autocast (what `auto` picks on a CPU with avx512_bf16 / AMX, emulated elsewhere) rounds matmuls to
    8 bits of mantissa, and the two paths round different partial sums, so updates agree in direction, not bits."""
    updates = accumulated_and_big_batch_updates(tiny_config, demo_shards, "bf16")
    a = torch.cat([u.flatten() for _, u, _ in updates])
    b = torch.cat([u.flatten() for _, _, u in updates])
    assert b.abs().max() > 0
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.995
    assert (a.sign() == b.sign()).float().mean() > 0.99


def test_checkpoint_round_trip_gives_identical_outputs(tiny_config, demo_shards, tmp_path):
    trainer, cfg, batches, _ = setup(tiny_config, demo_shards)
    trainer.train_step(batches[0])
    save_checkpoint(trainer.model, cfg, tmp_path / "ckpt", {"epoch": 1})
    loaded, loaded_cfg, meta = load_checkpoint(tmp_path / "ckpt")
    assert meta["epoch"] == 1 and loaded_cfg.labels == cfg.labels
    assert (tmp_path / "ckpt" / "assets" / "text" / "tokenizer.json").exists()
    trainer.model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(trainer.model(batches[1]), loaded(batches[1]))
    save_checkpoint(trainer.model, cfg, tmp_path / "ckpt")  # overwriting is atomic and leaves no temp dirs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_evaluate_counts_every_sample(tiny_config, demo_shards):
    trainer, _, _, info = setup(tiny_config, demo_shards)
    batches = list(make_loader(info, "test", trainer.model.preprocessors(), 16))
    metrics = trainer.evaluate(batches, len(info.labels))
    assert metrics["count"] == 40 and metrics["skipped"] == {}
    trainer.model.eval()
    with torch.no_grad():  # the accuracy is that of the model's argmax over every sample, counted by hand
        right = sum(int((trainer.model(b).argmax(-1) == b["label"]).sum()) for b in batches)
    assert sum(len(b["key"]) for b in batches) == 40
    assert metrics["accuracy"] == pytest.approx(right / 40)


def test_a_save_recovers_from_a_crash_in_an_earlier_save(tiny_config, demo_shards, tmp_path):
    """A killed save leaves a temp dir (never a checkpoint); a crash between the renames leaves only '<name>-old'."""
    trainer, cfg, _, _ = setup(tiny_config, demo_shards)
    save_checkpoint(trainer.model, cfg, tmp_path / "best", {"epoch": 1})
    (tmp_path / ".best-killed").mkdir()  # what a kill -9 during a save leaves
    (tmp_path / "best").rename(tmp_path / ".best-old")  # a crash between the two renames
    _, _, meta = load_checkpoint(tmp_path / "best")  # still readable: the previous checkpoint is found
    assert meta["epoch"] == 1
    save_checkpoint(trainer.model, cfg, tmp_path / "last", {"epoch": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".best-old", "last"]
    save_checkpoint(trainer.model, cfg, tmp_path / "best", {"epoch": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "last"]


def test_check_finite_reads_frozen_weights_once_and_again_after_a_load(tiny_config, demo_shards, monkeypatch):
    """Only the optimizer changes weights: after one full check, a checkpoint reads the trained parameters only
    (a frozen tower's weights are not walked at every save), until weights are loaded again."""
    from mmfuse.errors import TrainingError
    from mmfuse.train import trainer as trainer_module
    from mmfuse.train.freeze import apply_freeze

    trainer, _, _, _ = setup(tiny_config, demo_shards)
    apply_freeze(trainer.model, ["image"])
    trainer = Trainer(trainer.model, trainer.task, trainer.cfg, torch.device("cpu"), total_steps=100)
    frozen = next(trainer.model.encoders["image"].parameters())
    assert not frozen.requires_grad and all(p is not frozen for p in trainer.trainable)
    read: list[int] = []
    original = trainer_module.weights_finite
    monkeypatch.setattr(trainer_module, "weights_finite",
                        lambda model, env, parameters=None: read.append(
                            len(list(model.parameters() if parameters is None else parameters)))
                        or original(model, env, parameters))
    trainer.check_finite()
    trainer.check_finite()
    assert read == [len(list(trainer.model.parameters())), len(trainer.trainable)]
    with torch.no_grad():
        trainer.trainable[0].view(-1)[0] = float("nan")
    with pytest.raises(TrainingError, match="NaN or Inf"):
        trainer.check_finite()
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    names = {p: k for k, p in trainer.model.named_parameters()}
    state[names[frozen]].view(-1)[0] = float("inf")
    state[names[trainer.trainable[0]]].nan_to_num_(0.0)
    trainer.load_model_state(state)
    with pytest.raises(TrainingError, match="NaN or Inf"):  # a load: every weight is read again
        trainer.check_finite()
