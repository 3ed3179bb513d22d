"""Training recipes: which towers train in which stage (`train.recipe`; docs/recipes.md).

A recipe is a list of `Stage`s run one after the other in one run directory:

    full     one stage `train`: every tower not in `train.freeze` trains
    frozen   one stage `probe`: towers holding pretrained weights stay frozen (their outputs cached), the rest trains
    lp-ft    `probe` (up to `probe_epochs`, early-stopped after `probe_patience`), then `finetune` from the probe's
             best weights: the towers unfrozen (whole, their top `unfreeze_top` blocks, or their adapters), for
             `epochs`, the head at `finetune_head_lr_scale` x `lr`

Linear probing first, then fine-tuning (Kumar et al., 2022, "Fine-Tuning can Distort Pretrained Features"): a head
trained on frozen features does not send large random gradients into pretrained towers, and on cached features the
probe's epochs cost seconds. `auto` picks lp-ft when a tower holds pretrained weights and the user has not chosen
what to freeze (`train.freeze`) nor started from a trained run (`train.init_from`).

On a small training split (fewer than `train.small_data_items` items) `auto` also swaps each random-init tower that
has a registered small-data replacement (`register_encoder(small_data_for=...)`: `tiny-audio`, or `timm-audio` /
`hf-audio` without pretrained weights -> `logmel-stats`) before the model is built (`small_data_swaps`): a
transformer trained from scratch on a few thousand clips memorises them. An explicit recipe, `train.init_from`, a
tower in `train.freeze` or with an adapter, and towers holding pretrained weights keep the encoder they name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..config import TrainConfig
from ..encoders.registry import small_data_replacement
from ..model_config import EncoderSpec, ModelConfig

if TYPE_CHECKING:
    from ..model import FusionModel


@dataclass(frozen=True)
class Stage:
    """One stage of a recipe: its name, epoch budget, early-stopping patience, the towers it keeps frozen (on top of
    what `train.freeze` and adapters freeze) and the train config its optimizer and schedule are built from."""

    name: str
    epochs: int
    patience: int
    frozen: tuple[str, ...]
    train: TrainConfig
    top_only: tuple[str, ...] = ()
    """Towers of which only the top `train.unfreeze_top` blocks train in this stage."""


@dataclass(frozen=True)
class SmallDataSwap:
    """A random-init `tower` whose encoder `replaced` was swapped for `replacement`: `train_items` < `threshold`."""

    tower: str
    replaced: str
    replacement: str
    train_items: int
    threshold: int

    def describe(self) -> str:
        return (f"{self.tower} tower {self.replaced} -> {self.replacement} (random-init, {self.train_items:,} train "
                f"items < {self.threshold:,})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    """The recipe a run follows: `recipe` (resolved, never auto), its `stages`, why it was chosen, and the towers
    `auto` swapped for their small-data encoder before the model was built."""

    recipe: str
    stages: tuple[Stage, ...]
    reason: str
    small_data: tuple[SmallDataSwap, ...] = field(default=())

    def describe(self) -> str:
        """One line: 'lp-ft (pretrained text, image towers): probe <= 20 epochs on frozen towers, then finetune
        10 epochs'."""
        parts = []
        for stage in self.stages:
            frozen = f" with {', '.join(stage.frozen)} frozen" if stage.frozen else ""
            budget = f"<= {stage.epochs}" if stage.patience else str(stage.epochs)
            parts.append(f"{stage.name} {budget} epochs{frozen}")
        swaps = "".join(f"; {swap.describe()}" for swap in self.small_data)
        return f"{self.recipe} ({self.reason}): {', then '.join(parts)}{swaps}"


def small_data_swaps(train: TrainConfig, model: ModelConfig, train_items: int) -> tuple[SmallDataSwap, ...]:
    """The towers of `model` that `train.recipe: auto` swaps for their small-data encoder on a training split of
    `train_items` items (see the module docstring); none when `train_items` >= `train.small_data_items`."""
    if train.recipe != "auto" or train.init_from or train_items >= train.small_data_items:
        return ()
    swaps = []
    for m in model.modalities:
        spec = model.encoders[m]
        found = None if m in train.freeze or m in model.adapters else \
            small_data_replacement(spec.name, spec.kwargs, spec.pretrained)
        if found is not None:
            swaps.append(SmallDataSwap(m, spec.name, found[0], train_items, train.small_data_items))
    return tuple(swaps)


def apply_small_data(model: ModelConfig, swaps: tuple[SmallDataSwap, ...]) -> ModelConfig:
    """`model` with each swapped tower's encoder replaced (its input options kept, `small_data_replacement`)."""
    encoders = dict(model.encoders)
    for swap in swaps:
        spec = encoders[swap.tower]
        found = small_data_replacement(spec.name, spec.kwargs, spec.pretrained) if spec.name == swap.replaced \
            else None
        if found is not None:  # else swapped already (a resumed run's run_config.yaml)
            encoders[swap.tower] = EncoderSpec(*found, pretrained=False)
    return replace(model, encoders=encoders)


def pretrained_towers(model: FusionModel) -> list[str]:
    """The modalities whose encoder holds pretrained weights (`Encoder.pretrained`)."""
    return [m for m in model.modalities if getattr(model.encoders[m], "pretrained", False)]


def choose_recipe(train: TrainConfig, pretrained: list[str]) -> tuple[str, str, list[str]]:
    """`train.recipe` resolved for a model whose `pretrained` towers hold pretrained weights: (recipe, why, the
    towers a probe stage freezes). A recipe with no tower to freeze first becomes `full`."""
    recipe, reason = train.recipe, "train.recipe"
    if recipe == "auto":
        if train.init_from:
            recipe, reason = "full", "auto: starts from a trained run (train.init_from)"
        elif train.freeze:
            recipe, reason = "full", "auto: train.freeze chooses the frozen towers"
        elif not pretrained:
            recipe, reason = "full", "auto: no tower holds pretrained weights"
        else:
            recipe, reason = "lp-ft", f"auto: pretrained {', '.join(pretrained)} tower{'s' * (len(pretrained) > 1)}"
    probe = [m for m in pretrained if m not in train.freeze]
    if recipe != "full" and not probe:
        recipe, reason = "full", f"{reason}; no tower to freeze first, so one stage"
    return recipe, reason, probe


def plan_recipe(train: TrainConfig, model: FusionModel, small_data: tuple[SmallDataSwap, ...] = ()) -> Plan:
    """Resolve `train.recipe` for `model` into its stages (see the module docstring); `small_data`: the towers
    swapped before `model` was built (`small_data_swaps`), for the record."""
    recipe, reason, probe = choose_recipe(train, pretrained_towers(model))
    if recipe == "full":
        stages = (Stage("train", train.epochs, train.early_stopping_patience, (), train),)
    elif recipe == "frozen":
        stages = (Stage("probe", train.epochs, train.early_stopping_patience, tuple(probe), train),)
    else:
        finetune = replace(train, tower_lr={"head": train.lr * train.finetune_head_lr_scale, **train.tower_lr})
        partial = tuple(probe) if train.unfreeze_top else ()
        stages = (Stage("probe", train.probe_epochs, train.probe_patience, tuple(probe), train),
                  Stage("finetune", train.epochs, train.early_stopping_patience, (), finetune, partial))
    return Plan(recipe, stages, reason, small_data)
