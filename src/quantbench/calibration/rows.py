"""The rows this package adds to the precision table (appended at its end)."""

from __future__ import annotations

from typing import Any

from quantbench.calibration.scheme import AsSaved, Calibrated

GPTQ = Calibrated("gptq")
AWQ = Calibrated("awq")


def calibrated_precisions(precision: type) -> list[Any]:
    return [
        precision("gptq-4bit", f"GPTQ int4 weights (llm-compressor), group {GPTQ.group}, symmetric; "
                  "calibrated on --calibration-file", GPTQ),
        precision("awq-4bit", f"AWQ int4 weights (llm-compressor), group {AWQ.group}, scale and zero "
                  "point; calibrated on --calibration-file", AWQ),
        precision("as-saved", "a pre-quantized checkpoint (GPTQ, AWQ, compressed-tensors) loaded as saved",
                  AsSaved()),
    ]
