"""Local weight files for a backbone: read them safely, and map another implementation's names by position.

A state dict from another implementation of the same architecture (e.g. an EfficientNet port whose keys are
`_blocks.0._bn1.weight` where timm has `blocks.0.0.bn1.weight`) holds the same tensors in the same order: it is
loaded by position, but only when every shape agrees; otherwise the first mismatch is named. Only a torch state dict
keeps its order: a safetensors file lists its tensors sorted, so it must carry the model's own names.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError

_SKIPPED = "num_batches_tracked"
"""BatchNorm step counters: not weights, and not every implementation saves them."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or a torch state dict (`weights_only`: no pickle), on the CPU.

    A torch checkpoint that wraps its weights in `state_dict` or `model` is unwrapped. Raises `ConfigError`.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint '{path}': no such file")
    try:
        if path.suffix == ".safetensors":
            import safetensors.torch

            state = safetensors.torch.load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (any reader failure is the file's fault)
        raise ConfigError(f"checkpoint '{path}' is not a readable safetensors file or torch state dict: "
                          f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"checkpoint '{path}' is not a state dict (a mapping of names to tensors)")
    return state


def names_match(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Whether every weight of `model` has a tensor of its own name in `state` (extra entries, e.g. a classifier
    the model was built without, are allowed)."""
    return all(k in state for k in model.state_dict() if not k.endswith(_SKIPPED))


def load_by_position(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str | Path) -> None:
    """Copy `state`'s tensors into `model` in order, whatever their names, if every shape agrees.

    Step counters (`num_batches_tracked`) are skipped on both sides. `state` may end with a linear classifier the
    model was built without (a (C, num_features) weight and a (C,) bias). Raises `ConfigError` naming `where` and
    the first tensor that does not line up, or saying that a safetensors file has no order to map by.
    """
    if Path(where).suffix == ".safetensors":
        unknown = next(k for k in model.state_dict() if k not in state and not k.endswith(_SKIPPED))
        raise ConfigError(f"checkpoint '{where}' lacks '{unknown}': a safetensors file keeps no tensor order, so its "
                          f"names must be the model's (save another implementation's weights with torch.save)")
    target = [(k, v) for k, v in model.state_dict().items() if not k.endswith(_SKIPPED)]
    source = [(k, v) for k, v in state.items() if not k.endswith(_SKIPPED)]
    extra = source[len(target):]
    features = getattr(model, "num_features", None)
    if len(extra) == 2 and extra[0][1].ndim == 2 and extra[0][1].shape[1] == features \
            and tuple(extra[1][1].shape) == (extra[0][1].shape[0],):
        source = source[:len(target)]  # the classifier of an ImageNet checkpoint; the encoder has none
    for i, ((name, tensor), (own, mine)) in enumerate(zip(source, target, strict=False)):
        if tensor.shape != mine.shape:
            raise ConfigError(f"checkpoint '{where}' does not line up with the model by position: tensor {i} "
                              f"'{name}' {tuple(tensor.shape)} vs '{own}' {tuple(mine.shape)}")
    if len(source) != len(target):
        first = source[len(target)][0] if len(source) > len(target) else target[len(source)][0]
        raise ConfigError(f"checkpoint '{where}' has {len(source)} tensors where the model has {len(target)} "
                          f"(first unmatched: '{first}'); its names differ, so they must line up by position")
    mapped = {own: tensor for (own, _), (_, tensor) in zip(target, source, strict=True)}
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    assert not unexpected and all(k.endswith(_SKIPPED) for k in missing), (missing, unexpected)
