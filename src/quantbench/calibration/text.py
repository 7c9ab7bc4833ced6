"""The calibration text: our shipped passage or the user's file, cut into token samples."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from quantbench.errors import QuantbenchError

# Original prose written for quantbench (Apache-2.0, like the rest of the package); its topics
# differ from the held-out passage that perplexity is measured on.
DEFAULT_CALIBRATION_TEXT = Path(__file__).resolve().parent.parent / "data" / "calibration.txt"
DEFAULT_SAMPLES = 16
DEFAULT_SEQ_LEN = 256


def calibration_path(path: str | None) -> Path:
    return Path(path) if path else DEFAULT_CALIBRATION_TEXT


def read_calibration_text(path: str | None) -> str:
    from quantbench.validate import text_file

    return text_file(calibration_path(path), "calibration file")


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def token_samples(text: str, tokenizer: Any, samples: int, seq_len: int, source: str) -> list[list[int]]:
    """Consecutive, non-overlapping windows of `seq_len` tokens; as many as the text holds, up to
    `samples`. A text shorter than one window is an error, not a silently tiny calibration."""
    if samples < 1 or seq_len < 1:
        raise QuantbenchError("--calibration-samples and --calibration-seq-len must be positive")
    ids = tokenizer(text)["input_ids"]
    if len(ids) < seq_len:
        raise QuantbenchError(
            f"calibration text '{source}' has {len(ids)} tokens, fewer than one sample of "
            f"{seq_len} (--calibration-seq-len)"
        )
    count = min(samples, len(ids) // seq_len)
    return [ids[i * seq_len:(i + 1) * seq_len] for i in range(count)]
