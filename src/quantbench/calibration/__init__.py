"""Calibration-based 4-bit weights (GPTQ, AWQ) and pre-quantized checkpoints.

The quantizing is done by llm-compressor, which writes a compressed-tensors checkpoint;
transformers loads that checkpoint with only `compressed-tensors` installed. This package owns
the scheme that the precision table holds for these rows, the calibration text, the cache of
calibrated checkpoints and the adapter to the library.
"""

from quantbench.calibration.scheme import AsSaved, Calibrated, calibration_metrics

__all__ = ["AsSaved", "Calibrated", "calibration_metrics"]
