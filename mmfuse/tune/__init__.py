"""`mmfuse tune`: hyperparameter search with Optuna over a base run config (trials are `finetune` runs)."""

from .space import Param, default_space, load_space, parse_param
from .study import tune

__all__ = ["Param", "default_space", "load_space", "parse_param", "tune"]
