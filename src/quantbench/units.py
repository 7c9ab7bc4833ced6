"""Byte sizes: the one parser for '8GiB' / '8GB' / '8000MiB' and the one way to print them."""

from __future__ import annotations

import re

from quantbench.errors import QuantbenchError

MIB, GIB = 2**20, 2**30
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """'8GiB' / '8GB' / '8000MiB' -> bytes (GB = 10^9, GiB = 2^30)."""
    match = _SIZE.match(str(text))
    if not match:
        raise QuantbenchError(f"bad size '{text}'; expected e.g. 8GiB, 8GB or 8000MiB")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if value <= 0:
        raise QuantbenchError(f"size must be positive, got '{text}'")
    return int(value)


def gib(n: int | float) -> str:
    return f"{n / GIB:.2f} GiB"
