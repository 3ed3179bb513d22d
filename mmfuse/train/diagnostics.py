"""Signs, while a run trains, that its budget is burning without learning: validation at chance, or predicting
one class, while the train loss falls (the model memorises the training split). Warned once per recipe stage, with
what to try for the model at hand."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..model import FusionModel
from .recipe import pretrained_towers

LOSS_FALL = 0.85
"""The train loss counts as falling once an epoch's mean is below this x the stage's first epoch's."""
ONE_CLASS = 0.95
"""Validation 'predicts one class' when this share of its predictions is one class (and no class is that common)."""


def at_chance(val: dict[str, Any]) -> str | None:
    """Why the validation metrics of a classifier look like chance (None when they do not): accuracy within
    sampling noise of the majority-class rate, or nearly every prediction one class."""
    chance, accuracy, count = val.get("chance"), val.get("accuracy"), val.get("count", 0)
    if not chance or accuracy is None or not count:
        return None
    majority, top = chance["majority"], chance["top_prediction"]
    margin = max(0.02, 1.0 / math.sqrt(count))  # about two standard errors of a rate near 0.5
    if top >= ONE_CLASS and majority < ONE_CLASS:
        return f"{top:.0%} of val predictions are one class (val accuracy {accuracy:.3f})"
    if accuracy <= majority + margin:
        return f"val accuracy {accuracy:.3f} is at chance (the most common class is {majority:.3f} of val)"
    return None


def hints(model: FusionModel, recipe: str, fusion: str) -> list[str]:
    """What to try, for this model: the towers' weights, the recipe, the fusion."""
    out = []
    pretrained = pretrained_towers(model)
    random = [m for m in model.modalities if m not in pretrained
              and any(p.requires_grad for p in model.encoders[m].parameters())]
    if random:
        small = " (--audio-encoder logmel-stats)" if "audio" in random else ""
        out.append(f"the {', '.join(random)} tower{'s' * (len(random) > 1)} start{'s' * (len(random) == 1)} from "
                   f"random weights: use pretrained weights, or a small-data encoder{small} (docs/recipes.md)")
    if pretrained and recipe == "full":
        out.append("--recipe lp-ft (train fusion + head on the frozen towers first)")
    if len(model.modalities) > 1 and fusion in ("concat-mlp", "gated"):
        out.append(f"a fusion that models interactions between modalities (--fusion interact or cross-attention; "
                   f"'{fusion}' adds them up, and matching tasks need their products)")
    out.append("a lower --lr (and --encoder-lr)")
    return out


class ChanceWatch:
    """Call `after_epoch` after each epoch; warns through `echo` once per stage (per process: a resumed run may
    warn again)."""

    def __init__(self, echo: Callable[[str], Any], advice: list[str]) -> None:
        self.echo, self.advice = echo, advice
        self.warned: set[str] = set()

    def after_epoch(self, stage: str, records: list[dict[str, Any]], val: dict[str, Any]) -> str | None:
        """The warning given after the last of `records` (the stage's epoch records so far) with its validation
        metrics `val`, if any."""
        losses = [r.get("train_loss") for r in records]
        if len(losses) < 2 or not all(isinstance(x, float) and math.isfinite(x) for x in losses):
            return None
        first, loss = losses[0], losses[-1]
        why = at_chance(val)
        if stage in self.warned or why is None or not loss < LOSS_FALL * first:
            return None
        self.warned.add(stage)
        message = (f"mmfuse: warning: {why} while the train loss fell {first:.3f} -> {loss:.3f}: the model is "
                   f"memorising the training split. Try: {'; '.join(self.advice)}")
        self.echo(message)
        return message
