"""What the user may set on top of a precision when loading a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_INT8_THRESHOLD = 6.0
DEFAULT_SKIP_MODULES = ("lm_head",)


@dataclass(frozen=True)
class LoadOptions:
    """What the user may set on top of a precision."""

    compute_dtype: str | None = None  # None: best for the device (see resolve_compute_dtype)
    skip_modules: tuple[str, ...] = DEFAULT_SKIP_MODULES
    int8_threshold: float = DEFAULT_INT8_THRESHOLD
    device_map: str | dict[str, Any] | None = None
    max_memory: dict[Any, str] | None = None
    trust_remote_code: bool = False
