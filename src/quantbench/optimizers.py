"""Kept importable: the optimizer table and comparison live in quantbench.training."""

from quantbench.training.compare import *  # noqa: F403
from quantbench.training.optimizers import *  # noqa: F403
