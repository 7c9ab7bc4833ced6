"""Which linears a calibrated row quantizes, and with which group size.

compressed-tensors needs the group to divide a layer's input width. The row asks for group 128;
a layer whose width 128 does not divide gets the largest of 64 or 32 that does (SmolLM2's
576-wide inputs: 576 = 4.5 x 128 = 9 x 64), and a layer that none divides stays in the compute
dtype. Keeping such layers quantized at a finer group costs a few bits per thousand weights;
leaving them out (torchao-int4's rule) would leave 180 of SmolLM2's 210 linears unquantized.
"""

from __future__ import annotations

from collections.abc import Iterable

FALLBACK_GROUPS = (64, 32)


def group_for(in_features: int, group: int) -> int | None:
    for size in (group, *(g for g in FALLBACK_GROUPS if g < group)):
        if in_features % size == 0:
            return size
    return None


def plan_groups(
    linears: Iterable[tuple[str, int]], group: int, skipped: Iterable[str]
) -> tuple[dict[int, list[str]], list[str]]:
    """(name, in_features) of each linear -> {group size: names}, and the names left unquantized."""
    skip = set(skipped)
    plan: dict[int, list[str]] = {}
    left: list[str] = []
    for name, width in linears:
        size = None if name in skip else group_for(width, group)
        if size is None:
            left.append(name)
        else:
            plan.setdefault(size, []).append(name)
    return plan, left
