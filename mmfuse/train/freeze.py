"""What trains: freeze whole towers, optionally leaving their top layers trainable."""

from __future__ import annotations

from ..errors import ConfigError
from ..model import FusionModel


def apply_freeze(model: FusionModel, towers: list[str], unfreeze_top: int = 0) -> None:
    """Freeze the encoders of `towers` (modalities); keep the top `unfreeze_top` layers trainable."""
    for tower in towers:
        if tower not in model.encoders:
            raise ConfigError(f"train.freeze names '{tower}', but the model's towers are "
                              f"{', '.join(model.modalities)}")
        model.encoders[tower].lock(unlocked_layers=unfreeze_top)


def count_parameters(model: FusionModel) -> dict[str, int]:
    """Total and trainable parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}
