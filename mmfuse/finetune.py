"""`finetune(RunConfig)`: data -> model -> epochs -> best/last checkpoints -> test metrics. What the CLI runs.

A run directory holds:
    run_config.yaml            the resolved run config
    metrics.jsonl              one record per logged step and per epoch
    metrics.json               final summary: best epoch, val and test metrics, skipped samples, timings
    checkpoints/{best,last}/   model.safetensors + config.json + assets (last: written once, after the last epoch)
    checkpoints/resume/        the same + train_state.pt (optimizer, schedule, RNG, data position) for --resume

Runs under `torchrun` use DDP: each rank reads distinct shards, metrics are summed over ranks, rank 0 writes.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .checkpoint import read_weights, resolve_checkpoint_dir, save_checkpoint
from .config import RunConfig, dump_yaml
from .data.augment import ImageAugment, stage_policy
from .data.demo import DemoSpec, demo_dataset
from .data.info import DatasetInfo
from .data.loader import SHARD_REASON, make_loader, sample_skips
from .data.position import LoaderPosition
from .encoders.timm_image import ImagePreprocessor
from .errors import ConfigError, DataError, OutputError, TrainingError
from .outputs import OutputLock
from .progress import progress_bar
from .tasks import check_model_config, create_model_and_task, create_task, task_class
from .tasks.base import join_parts
from .train.coverage import Coverage, data_summary
from .train.diagnostics import ChanceWatch, hints
from .train.distributed import (
    DistEnv,
    abandon,
    any_rank,
    barrier,
    gather_objects,
    init_distributed,
    is_initialized,
    shutdown,
    sum_counters,
)
from .train.feature_cache import FeatureCache
from .train.freeze import apply_freeze, count_parameters
from .train.init_from import init_from_run
from .train.optim import tower_rates
from .train.recipe import SmallDataSwap, Stage, apply_small_data, plan_recipe, small_data_swaps
from .train.run_dir import claim_run_dir
from .train.selection import Selection
from .train.state import read_state, rng_state, seed_everything, set_rng_state
from .train.tensorboard import open_tensorboard
from .train.trainer import EpochTally, MetricsLog, Step, Trainer


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric metrics of an evaluation (no counts, no per-target or skipped details)."""
    return {k: v for k, v in metrics.items() if isinstance(v, float)}


def default_run_dir(config: RunConfig) -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{'-'.join(config.model.modalities)}"


class Preempted(Exception):
    """SIGTERM arrived; a resumable checkpoint has been written."""


class FinetuneRun:
    """One fine-tuning run: set-up, the epoch loop with resumable checkpoints, and the final test."""

    def __init__(self, config: RunConfig, echo: Any = print, resume: bool = False, overwrite: bool = False,
                 on_epoch: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.config, self.started, self.time_before = config, time.perf_counter(), 0.0
        self.on_epoch = on_epoch  # rank 0, after each epoch's record is written; raising stops the run
        self.env: DistEnv = init_distributed(config.train.device)
        self.echo = echo if self.env.is_main else (lambda *_: None)
        self.out = Path(config.out) if config.out else default_run_dir(config)
        self.lock = self._claim(resume, overwrite)
        try:
            self._setup(resume)
        except BaseException:
            self.release()
            raise

    def _claim(self, resume: bool, overwrite: bool) -> OutputLock | None:
        """Rank 0 locks the run directory (`claim_run_dir`); every rank stops if it was refused."""
        lock, refused = None, None
        if self.env.is_main:
            try:
                lock = claim_run_dir(self.out, resume, overwrite)
            except OutputError as err:
                refused = err
        if any_rank(refused is not None, self.env):
            raise refused or OutputError(f"rank 0 could not take the run directory {self.out} (see its message)")
        return lock

    def release(self) -> None:
        """Let other processes write the run directory (the lock also ends with the process)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _setup(self, resume: bool) -> None:
        """Data, then model and task, then trainer, then the state a resumable checkpoint carries, then outputs."""
        check_model_config(self.config.model)  # task and fusion names before any data is read
        self._open_data()
        self._build()
        self._new_progress()
        log_lines = self._restore() if resume else 0
        if self.env.is_main:
            self._open_outputs(resume, log_lines)

    def _open_data(self) -> None:
        """The dataset (the task's demo without `data.path`), checked for the run's modalities and splits."""
        config = self.config
        data = config.data
        demo = DemoSpec(**task_class(config.model.task).demo_options)  # what the task's demo needs
        self.info = DatasetInfo.load(data.path or demo_dataset(demo), verify=data.verify_shards)
        self.info.require_modalities(config.model.modalities)
        for split in (data.train_split, data.val_split, data.test_split):
            self.info.require_split(split)
        if data.batch_size % self.env.world_size:
            raise ConfigError(f"data.batch_size {data.batch_size} (the global batch) must be divisible by the "
                              f"{self.env.world_size} processes")
        self.rank_batch = data.batch_size // self.env.world_size
        self.epoch_samples = self.info.count(data.train_split)
        if data.resampled and data.epoch_samples:
            self.epoch_samples = data.epoch_samples
        # the DataLoader's real worker count (make_loader caps it at the number of shards unless resampled)
        self.train_workers = data.num_workers if data.resampled else min(
            data.num_workers, len(self.info.shard_urls(data.train_split)))

    def _build(self) -> None:
        """Model and task (fresh, or `--init-from` a finished run), freezing, the recipe, and its first stage."""
        data, train = self.config.data, self.config.train
        self.model_config = task_class(self.config.model.task).prepare(self.config.model, self.info)
        small_data = small_data_swaps(train, self.model_config, self.info.count(data.train_split))
        self.model_config = apply_small_data(self.model_config, small_data)
        seed_everything(train.seed)
        if train.init_from:
            model, self.model_config, init = init_from_run(train.init_from, self.model_config)
            self.task = create_task(self.model_config)
            self.echo(f"mmfuse: initialised from {init['source']}: {len(init['kept'])} labels kept, "
                      f"{len(init['new'])} new{': ' + ', '.join(init['new']) if init['new'] else ''}")
        else:
            model, self.task = create_model_and_task(self.model_config)
        apply_freeze(model, train.freeze, train.unfreeze_top)
        if train.grad_checkpointing:
            for encoder in model.encoders.values():
                encoder.set_grad_checkpointing(True)
        self.model, self.plan = model, plan_recipe(train, model, small_data)
        self.watch = ChanceWatch(self.echo, hints(model, self.plan.recipe, self.model_config.fusion))
        if len(self.plan.stages) > 1 and self.env.distributed and train.strategy == "fsdp":
            raise ConfigError(f"train.recipe {self.plan.recipe} ({self.plan.reason}) changes which towers train "
                              f"between stages, which FSDP sharding does not follow: use train.strategy=ddp, or "
                              f"train.recipe full or frozen")
        self.trainable = {name: p.requires_grad for name, p in model.named_parameters()}  # what a finetune stage trains
        self.micro_batches = math.ceil(self.epoch_samples / data.batch_size)
        self.preprocessors = model.preprocessors()
        self.augments = {stage.name: self._augment_policy(stage) for stage in self.plan.stages}
        self.loader_kwargs = {"num_workers": data.num_workers, "pin_memory": self.env.device.type == "cuda",
                              "strict": data.strict, "target": self.task.target}
        self.trainer: Trainer | None = None
        self.cache: FeatureCache | None = None
        self._enter_stage(0, first_epoch=1)

    @property
    def stage(self) -> Stage:
        return self.plan.stages[self.stage_index]

    def _augment_policy(self, stage: Stage) -> str:
        """`train.augment` resolved for `stage`: its policy where the image tower trains in it, else none."""
        setting = self.config.train.augment
        trains = "image" in self.model.modalities and "image" not in stage.frozen and any(
            self.trainable[name] for name, _ in self.model.encoders["image"].named_parameters(prefix="encoders.image"))
        policy = stage_policy(setting, trains)
        if setting == "auto" and trains and not getattr(self.model.encoders["image"], "pretrained", False):
            policy = "none"  # a random-init tower from scratch: on the demo, light cost 0.99 -> 0.70 test accuracy
        if policy != "none" and not isinstance(self.preprocessors["image"], ImagePreprocessor):
            if setting != "auto":
                raise ConfigError(f"train.augment {setting}: the image encoder's preprocessor "
                                  f"({type(self.preprocessors['image']).__name__}) takes no augmentation; use none")
            policy = "none"
        return policy

    def _enter_stage(self, index: int, first_epoch: int, counts: tuple[int, int, int] = (0, 0, 0)) -> None:
        """Set the model up for recipe stage `index` (starting at epoch `first_epoch`): what trains, the feature
        cache of the towers that do not, and a trainer (optimizer and schedule) for the stage's steps, which starts
        at the earlier stages' `counts` (optimizer steps, micro-steps, non-finite steps skipped)."""
        data, train = self.config.data, self.config.train
        self.stage_index, self.stage_start = index, first_epoch
        stage, model = self.stage, self.model
        if self.cache is not None:
            self.cache.uninstall(model)
        for name, p in model.named_parameters():
            p.requires_grad_(self.trainable[name])
        for m in stage.frozen:
            model.encoders[m].lock()
        for m in stage.top_only:
            model.encoders[m].lock(unlocked_layers=train.unfreeze_top)
        self.params = count_parameters(model)
        total_steps = max(1, self.micro_batches // train.grad_accum) * stage.epochs
        if train.max_steps is not None:  # the run's budget, less the earlier stages' steps
            total_steps = max(1, min(total_steps, train.max_steps - counts[0]))
        self.trainer = None  # the previous stage's trainer, and its DDP wrapper's gradient hooks, go first
        self.trainer = Trainer(model, self.task, stage.train, self.env.device, total_steps, self.env)
        self.trainer.step, self.trainer.micro_step, self.trainer.watch.skipped = counts
        towers = model.frozen_towers()
        if not (train.cache_frozen and towers):
            self.cache = None
        elif self.cache is None or set(self.cache.towers) != set(towers):
            self.cache = FeatureCache(model, self.model_config.encoders, self.info, self.env.device,
                                      self.trainer.precision, data.eval_batch_size, train.cache_dir, self.env,
                                      self.echo, strict=data.strict)
        if self.cache is not None:
            self.cache.install(model)  # frozen towers read their cached outputs; weights and names stay the encoders'

    def _next_stage(self) -> None:
        """Start the next recipe stage from the best weights so far (the previous stage's best epoch)."""
        if not self.best["epoch"]:
            raise TrainingError(f"stage '{self.stage.name}' had no epoch with a finite val {self.task.best_metric}: "
                                f"no weights to start stage '{self.plan.stages[self.stage_index + 1].name}' from "
                                f"(see {self.out / 'metrics.jsonl'})")
        counts = (self.trainer.step, self.trainer.micro_step, self.trainer.watch.skipped)
        self._enter_stage(self.stage_index + 1, self.epoch, counts)
        self.trainer.load_model_state(read_weights(self.out / "checkpoints" / "best"))
        rates = tower_rates(self.model, self.stage.train)
        towers = ", ".join(f"{m} at {rates[m]:.2g}" for m in self.model.modalities
                           if any(p.requires_grad for p in self.model.encoders[m].parameters()))
        self.echo(f"mmfuse: stage {self.stage_index + 1}/{len(self.plan.stages)} '{self.stage.name}' from epoch "
                  f"{self.best['epoch']}'s weights: {towers or 'no tower'} trained, head at {rates['head']:.2g}, "
                  f"{self.params['trainable']:,} of {self.params['total']:,} parameters, up to {self.stage.epochs} "
                  f"epochs")

    def _new_progress(self) -> None:
        """What a resumable checkpoint carries: position, best and selection, records, counts."""
        self.saved: tuple[int, Path | None] = (-1, None)  # (trainer weights version, checkpoint) of the last save
        train = self.config.train
        self.epoch, self.position = 1, LoaderPosition()
        self.best: dict[str, Any] = {"epoch": 0}
        self.selection = Selection(self.task.best_metric, self.task.higher_is_better, train.keep_best,
                                   train.early_stopping_patience)
        self.records: list[dict[str, Any]] = []
        self.skipped: Counter[str] = Counter()
        self.coverage = Coverage(self.info, self.config.data.strict, self.echo)
        self.ignored: Counter[str] = Counter()
        self.tally = EpochTally()
        self.stop_requested = False  # SIGTERM on this rank
        self.stop_everywhere = False  # ... seen by every rank at the same step
        self.stopped_early = False

    def _open_outputs(self, resume: bool, log_lines: int) -> None:
        """run_config.yaml, metrics.jsonl (cut to the checkpoint's lines on a resume) and TensorBoard (rank 0)."""
        config = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        dump_yaml(replace(config, out=str(self.out), data=replace(config.data, path=str(self.info.root)),
                          model=apply_small_data(config.model, self.plan.small_data)),  # the towers trained
                  self.out / "run_config.yaml")
        purge = self.trainer.step + 1 if resume else None  # drop events a killed run logged past its checkpoint
        self.tensorboard = open_tensorboard(self.out / "tensorboard", purge, self.echo) if config.train.tensorboard \
            else None
        self.log = MetricsLog(self.out / "metrics.jsonl", keep=log_lines, mirror=self.tensorboard)

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def _rank_state(self) -> dict[str, Any]:
        """What differs between ranks: data position, RNG streams, this epoch's tallies, skip counts."""
        return {"position": self.position.to_dict(), "rng": rng_state(),
                "acc": self.tally.to_dict(),
                "skipped": dict(self.skipped), "ignored": dict(self.ignored)}

    def _train_state(self, ranks: list[dict[str, Any]]) -> dict[str, Any]:
        """The resumable state: every rank's part (`ranks`, in rank order) and what all ranks share."""
        t = self.trainer
        return {"epoch": self.epoch, "stage": self.stage_index, "stage_start": self.stage_start,
                "ranks": ranks, "step": t.step, "micro_step": t.micro_step,
                "optimizer": t.optimizer_state(), "scheduler": t.scheduler.state_dict(),
                "scaler": t.scaler.state_dict(), "best": dict(self.best), "records": list(self.records),
                "nonfinite_skipped": t.watch.skipped, "incomplete": dict(self.coverage.incomplete),
                "selection": self.selection.to_dict(), "log_lines": self.log.lines if self.env.is_main else 0,
                "train_time_s": self._train_time(), "small_data": [s.to_dict() for s in self.plan.small_data]}

    def _save(self, kind: str, train_state: bool = False, epoch: int | None = None) -> None:
        # collectives: every rank takes part (the gather; under FSDP the optimizer state and the weights)
        self.trainer.check_finite()  # never a checkpoint of NaN weights, nor one written after a NaN loss
        state = self._train_state(gather_objects(self._rank_state(), self.env)) if train_state else None
        weights = self.trainer.model_state()
        if self.env.is_main:
            # a second checkpoint of unchanged weights (resume after best, at an epoch's end) links the first's file
            same = self.saved[1] if self.saved[0] == self.trainer.weights_version else None
            save_checkpoint(self.trainer.model, self.model_config, self.out / "checkpoints" / kind,
                            {"epoch": epoch or self.epoch}, train_state=state, state_dict=weights, same_weights=same)
            self.saved = (self.trainer.weights_version, self.out / "checkpoints" / kind)
        barrier(self.env)

    def _restore(self) -> int:
        ckpt = resolve_checkpoint_dir(self.out / "checkpoints" / "resume")
        if not (ckpt / "train_state.pt").exists():
            raise ConfigError(f"{self.out} has no resumable checkpoint (checkpoints/resume/train_state.pt)")
        state = read_state(ckpt)
        if state.get("stage", 0) != self.stage_index:  # stopped in a later stage of the recipe
            if state["stage"] >= len(self.plan.stages):
                raise ConfigError(f"{ckpt} was written in stage {state['stage'] + 1} of a recipe; this run's "
                                  f"recipe ({self.plan.describe()}) has {len(self.plan.stages)}")
            self._enter_stage(state["stage"], state["stage_start"],
                              (state["step"], state["micro_step"], state.get("nonfinite_skipped", 0)))
        t = self.trainer
        try:
            t.load_model_state(read_weights(ckpt))
            t.load_optimizer_state(state["optimizer"])
            t.scheduler.load_state_dict(state["scheduler"])
            t.scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, RuntimeError, TypeError, IndexError) as err:  # a mixed directory
            raise ConfigError(f"{ckpt} does not fit the run of {self.out / 'run_config.yaml'} ({type(err).__name__}"
                              f"): its weights or optimizer state come from another run") from None
        t.step, t.micro_step = state["step"], state["micro_step"]
        t.watch.skipped = state.get("nonfinite_skipped", 0)
        self.time_before = state.get("train_time_s", 0.0)
        if state.get("small_data"):  # swapped when the run started; its run_config.yaml names the swapped towers
            self.plan = replace(self.plan, small_data=tuple(SmallDataSwap(**s) for s in state["small_data"]))
        self.coverage.incomplete = state.get("incomplete", {})
        if len(state["ranks"]) != self.env.world_size:
            raise ConfigError(f"{ckpt} was written by {len(state['ranks'])} processes; resume with as many")
        mine = state["ranks"][self.env.rank]
        self.epoch, self.position = state["epoch"], LoaderPosition.from_dict(mine["position"])
        self.best, self.records = state["best"], state["records"]
        self.tally = EpochTally.from_dict(mine["acc"])
        if "selection" in state:
            self.selection = Selection.from_dict(state["selection"])
        elif self.best.get("epoch"):  # a resumable checkpoint from before model selection: only `best`
            self.selection.update(self.best["epoch"], self.best[self.task.best_metric])
        self.skipped, self.ignored = Counter(mine["skipped"]), Counter(mine["ignored"])
        set_rng_state(mine["rng"])
        self.echo(f"mmfuse: resuming {self.out} at epoch {self.epoch}, step {t.step}")
        return state["log_lines"]

    # -- the loop ------------------------------------------------------------------------------------------------
    def _after_step(self, step: Step) -> bool:
        """Book-keeping after each micro-batch: counts, data position, the step's log line and checkpoints. True
        ends the epoch (max_steps)."""
        t, train = self.trainer, self.config.train
        self.skipped.update(step.skipped)
        self.tally.add(step, skip_nonfinite=train.nonfinite == "skip")
        if step.cursor is not None:
            worker, cursor = step.cursor
            self.position.advance(worker, cursor, self.train_workers)
        self.stop_everywhere |= step.stop  # the same on every rank at the same step
        if not step.size and not step.padding:  # a batch whose samples were all skipped: no step was taken
            return False
        if t.micro_step % train.grad_accum:
            return False
        if self.env.is_main and t.step % train.log_every == 0 and step.size:
            self.log.write({"epoch": self.epoch, "step": t.step, "loss": float(step.loss),
                            "lr": t.scheduler.get_last_lr()[-1]})
        done = train.max_steps is not None and t.step >= train.max_steps
        # every rank is at this step (`Trainer.steps`), so the checkpoint's collectives may run here
        if self.stop_everywhere:
            self._save("resume", train_state=True)
            raise Preempted
        if train.checkpoint_every and t.step % train.checkpoint_every == 0 and not done:
            self._save("resume", train_state=True)
        return done

    def _epoch(self) -> None:
        data, train = self.config.data, self.config.train
        policy = self.augments[self.stage.name]
        augment = {"image": ImageAugment(policy, train.seed, self.epoch)} if policy != "none" else None
        loader = self._loader(data.train_split, self.rank_batch, shuffle=True, seed=train.seed, epoch=self.epoch,
                              shuffle_buffer=data.shuffle_buffer, resampled=data.resampled,
                              epoch_samples=self.epoch_samples, position=self.position, augment=augment)
        rank_batches = math.ceil(self.epoch_samples / self.env.world_size / self.rank_batch)
        stage = f"{self.stage.name} " if len(self.plan.stages) > 1 else ""
        bar = progress_bar(total=rank_batches, initial=self.tally.batches, leave=False,
                           desc=f"{stage}epoch {self.epoch - self.stage_start + 1}/{self.stage.epochs}",
                           disable=not (train.progress and self.env.is_main), dynamic_ncols=True)
        for step in self.trainer.steps(self._tally(loader), bar, padding=self._padding_batch,
                                       stop=lambda: self.stop_requested):
            if self._after_step(step):
                break
        bar.close()
        self.trainer.watch.check()  # the losses not read yet: no evaluation of a model trained on a NaN
        samples = sum(gather_objects(self.tally.samples, self.env))
        skipped = sum(gather_objects(self.tally.skipped, self.env))
        shards = sum_counters(Counter(self.tally.shards), self.env)
        if not samples:
            raise DataError(f"split '{data.train_split}' of {self.info.root} yielded no training sample "
                            f"(dataset.json lists {self.info.count(data.train_split)}): "
                            f"{data_summary(Counter(sum_counters(self.skipped, self.env)), Counter())[8:]}")
        cut = (train.max_steps is not None and self.trainer.step >= train.max_steps) or data.resampled or \
            (self.env.distributed and (self.trainer.model.alignment is not None or self.task.gathers))
        if not cut:  # a whole pass over the split (a lockstep epoch ends when the first rank runs out)
            self.coverage.check(data.train_split, samples, skipped, shards)
        val = self.evaluate(data.val_split)
        self.coverage.check(data.val_split, val["count"], sample_skips(val["skipped"]), val["skipped"])
        record = {"epoch": self.epoch, "stage": self.stage.name, "step": self.trainer.step,
                  "train_loss": self.tally.mean_loss,
                  "train_samples": samples,
                  "train_skipped": skipped,
                  "data_s": round(self.tally.data_s, 3), "compute_s": round(self.tally.compute_s, 3),
                  "elapsed_s": round(self._train_time(), 2),
                  **{f"val_{k}": v for k, v in scalar_metrics(val).items()}}
        if train.nonfinite == "skip":
            record["nonfinite_skipped"] = self.trainer.watch.skipped - sum(r.get("nonfinite_skipped", 0)
                                                                           for r in self.records)
        self.records.append(record)
        if self.env.is_main:
            self.log.write(record)
            if self.on_epoch is not None:
                self.on_epoch(dict(record))
        nonfinite = f", {record['nonfinite_skipped']} non-finite steps skipped" \
            if record.get("nonfinite_skipped") else ""
        self.echo(f"epoch {self.epoch}: loss {record['train_loss']:.4f}  val {self.task.describe(val)}  "
                  f"({samples} samples, data {record['data_s']:.1f}s, compute {record['compute_s']:.1f}s{nonfinite})")
        self.watch.after_epoch(self.stage.name, [r for r in self.records if r.get("stage") == self.stage.name], val)
        improved, dropped = self.selection.update(self.epoch, val[self.task.best_metric])
        if improved:
            self.best = {"epoch": self.epoch, **{k: val[k] for k in self.task.metric_names}}
            self._save("best")
        if self.selection.keep > 1:
            self._keep_top(dropped)

    def _keep_top(self, dropped: list[int]) -> None:
        """checkpoints/top/epoch-NNNN for the `keep_best` best epochs, and index.json ranking them (rank 0)."""
        if self.selection.kept(self.epoch):
            self._save(f"top/epoch-{self.epoch:04d}")
        if self.env.is_main:
            self.selection.write_index(self.out / "checkpoints" / "top", dropped)

    def evaluate(self, split: str) -> dict[str, Any]:
        loader = self._loader(split, self.config.data.eval_batch_size)
        reference = self._loader(self.config.data.train_split, self.config.data.eval_batch_size) \
            if self.task.needs_reference else None
        metrics = self.trainer.evaluate(self._tally(loader), reference=reference)
        self.skipped.update(metrics["skipped"])
        return metrics

    def _loader(self, split: str, batch_size: int, **kwargs: Any):
        """The loader of `split`; cached towers' modalities are looked up by key instead of decoded."""
        source = self.cache.source(split) if self.cache is not None else {}
        return make_loader(self.info, split, self.preprocessors, batch_size,
                           **{**self.loader_kwargs, **source, **kwargs})

    def _padding_batch(self) -> dict[str, Any]:
        """A batch for the zero-weight steps of a rank whose share of the epoch has run out: the first of the
        train split (read whole by this rank, unshuffled)."""
        split = self.config.data.train_split
        for batch in self._loader(split, self.rank_batch, every_rank=True, num_workers=0):
            if len(batch["key"]):
                return batch
        raise DataError(f"split '{split}' of {self.info.root} has no readable sample")

    def _tally(self, loader):
        """Count the shard members the loader ignored (pickle), reported beside the skipped samples."""
        for batch in loader:
            self.ignored.update(batch.get("ignored", {}))
            yield batch

    def _train_time(self) -> float:
        """Seconds of this run so far: this process's, plus those of the processes it resumes."""
        return self.time_before + time.perf_counter() - self.started

    def run(self) -> dict[str, Any]:
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            self.echo(f"mmfuse: fine-tuning {'+'.join(self.model_config.modalities)} with "
                      f"'{self.model_config.fusion}' fusion on {self.info.root} "
                      f"({self.info.count(self.config.data.train_split)} train samples, {self.task.summary()}), "
                      f"{self.env.world_size} x {self.env.device} {self.trainer.precision}, "
                      f"{self.trainer.total_steps} steps, {self.params['trainable']:,} of {self.params['total']:,} "
                      f"parameters trained -> {self.out}")
            self.echo(f"mmfuse: recipe {self.plan.describe()}")
            if "image" in self.model_config.modalities:
                self.echo(f"mmfuse: image augmentation (train.augment {self.config.train.augment}): "
                          f"{', '.join(f'{name} {policy}' for name, policy in self.augments.items())}")
            while True:
                if self._run_stage() or self.stage_index + 1 == len(self.plan.stages):
                    break
                self._next_stage()
                self._save("resume", train_state=True)
                if any_rank(self.stop_requested, self.env):
                    raise Preempted
            self._save("last", epoch=self.epoch - 1)  # once: until now `resume` held the latest epoch's weights
            return self._finish()
        except Preempted:
            self.echo(f"mmfuse: stopped by SIGTERM at step {self.trainer.step}; resume with "
                      f"`mmfuse finetune --resume {self.out}`")
            return {"interrupted": True, "step": self.trainer.step, "out": str(self.out)}
        finally:
            signal.signal(signal.SIGTERM, previous)
            if self.env.is_main and self.tensorboard is not None:
                self.tensorboard.close()
            self.release()

    def _run_stage(self) -> bool:
        """The current stage's remaining epochs, with a resumable checkpoint after each but its last. True when the
        run is over (`max_steps` reached)."""
        stage, train = self.stage, self.config.train
        last = self.stage_start + stage.epochs - 1
        while self.epoch <= last:
            self._epoch()
            finished = train.max_steps is not None and self.trainer.step >= train.max_steps
            stalled = self.selection.stalled(stage.patience, since=self.stage_start - 1) and self.epoch < last
            if stalled:
                final = self.stage_index + 1 == len(self.plan.stages)
                self.stopped_early |= final
                self.echo(f"mmfuse: {'early stopping' if final else f'stage {stage.name} ends'} after epoch "
                          f"{self.epoch}: val {self.task.best_metric} has not improved for {stage.patience} "
                          f"epochs (best epoch {self.selection.best_epoch})")
            self.epoch += 1
            self.position = LoaderPosition()
            self.tally = EpochTally()
            if finished or stalled or self.epoch > last:
                return finished
            self._save("resume", train_state=True)
            if any_rank(self.stop_requested, self.env):
                raise Preempted
        return False

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.stop_requested = True

    def _stage_summary(self) -> list[dict[str, Any]]:
        """Per stage that ran: its epochs and its best epoch by the task's metric."""
        out = []
        for stage in self.plan.stages[: self.stage_index + 1]:
            records = [r for r in self.records if r.get("stage") == stage.name]
            key = f"val_{self.task.best_metric}"
            scored = [r for r in records if isinstance(r.get(key), float) and math.isfinite(r[key])]
            best = (max if self.task.higher_is_better else min)(scored, key=lambda r: r[key]) if scored else None
            out.append({"name": stage.name, "epochs": len(records), "frozen": list(stage.frozen),
                        "augment": self.augments[stage.name],
                        "best_epoch": best["epoch"] if best else 0, key: best[key] if best else None})
        return out

    def _finish(self) -> dict[str, Any]:
        data = self.config.data
        if not self.best["epoch"]:
            raise TrainingError(f"no epoch had a finite val {self.task.best_metric} ({len(self.records)} epochs): "
                                f"no best model to test (see {self.out / 'metrics.jsonl'})")
        self.trainer.load_model_state(read_weights(self.out / "checkpoints" / "best"))
        test = self.evaluate(data.test_split)
        skipped = sum_counters(self.skipped, self.env)
        ignored = sum_counters(self.ignored, self.env)
        summary = {
            "modalities": self.model_config.modalities, "fusion": self.model_config.fusion,
            "labels": self.model_config.labels if self.task.reports_labels else len(self.model_config.labels),
            "best_epoch": self.best["epoch"],
            "val": {k: v for k, v in self.best.items() if k != "epoch"},
            "test": {**{k: test[k] for k in self.task.metric_names}, **scalar_metrics(test),
                     **{k: test[k] for k in ("per_target", "pairs", "users", "items") if k in test},
                     "count": test["count"]},
            "task": self.task.name,
            "skipped": skipped, "skipped_total": sample_skips(skipped), "ignored_members": ignored,
            "unreadable_shards": {r[len(SHARD_REASON):]: n for r, n in skipped.items() if r.startswith(SHARD_REASON)},
            "incomplete_splits": self.coverage.incomplete,
            "epochs": self.records, "stopped_early": self.stopped_early,
            "recipe": {"name": self.plan.recipe, "reason": self.plan.reason, "augment": self.config.train.augment,
                       "stages": self._stage_summary(), "small_data": [s.to_dict() for s in self.plan.small_data]},
            "nonfinite_skipped": self.trainer.watch.skipped,
            "steps": self.trainer.step, "parameters": self.params, "world_size": self.env.world_size,
            "device": str(self.env.device), "precision": self.trainer.precision,
            "train_time_s": round(self._train_time(), 1), "data": str(self.info.root),
        }
        if self.env.is_main:
            (self.out / "metrics.json").write_text(json.dumps(summary, indent=2))
        self.echo(data_summary(Counter(skipped), Counter(ignored), self.coverage.incomplete))
        if self.trainer.watch.skipped:
            self.echo(f"mmfuse: skipped {self.trainer.watch.skipped} optimizer steps with a non-finite loss or "
                      f"gradient (train.nonfinite=skip)")
        self.coverage.check(data.test_split, test["count"], sample_skips(test["skipped"]), test["skipped"], error=True)
        (name, value), *rest = self.task.describe_parts(test)
        self.echo(f"test {name} ({'+'.join(self.model_config.modalities)}, best epoch {self.best['epoch']}): "
                  f"{value}{'  ' + join_parts(rest) if rest else ''}  [{self.out / 'metrics.json'}]")
        return summary


def finetune(config: RunConfig, echo: Any = print, resume: bool = False, overwrite: bool = False,
             on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train `config.model` on `config.data`, evaluate each epoch, test the best checkpoint. Returns metrics.json.

    `resume=True` continues the run in `config.out` from its `checkpoints/resume` exactly where it stopped.
    The run directory is locked while the run lasts; one holding another run is refused unless `overwrite`
    (which removes that run's files first; see `mmfuse.train.run_dir`).
    `on_epoch(record)` is called on rank 0 with each epoch's metrics.jsonl record (`val_<metric>` ...) once it is
    written; an exception it raises ends the run (single-process runs: `mmfuse tune` prunes trials so).
    """
    started_group = not is_initialized()  # a caller's own process group is left to the caller
    run = None
    try:
        run = FinetuneRun(config, echo, resume, overwrite, on_epoch)
        result = run.run()
    except BaseException:
        if started_group:
            abandon()  # no barrier: the other ranks may never reach it
        raise
    finally:
        if run is not None:
            run.release()
    if started_group:
        shutdown(run.env)
    return result
