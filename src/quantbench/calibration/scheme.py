"""The precision-table schemes of calibrated rows (gptq-4bit, awq-4bit) and of `as-saved`.

Both produce the folder that `from_pretrained` loads (`prepare_checkpoint`); the quantization
config travels inside that folder's config.json, so `hf_config` is None.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from quantbench.calibration.groups import group_for
from quantbench.errors import QuantbenchError

METADATA_FILE = "quantbench-calibration.json"
# What each method asks llm-compressor for: GPTQ symmetric (scale only), AWQ asymmetric
# (scale and zero point), the layouts of the libraries' W4A16 presets.
METHODS = {"gptq": "W4A16", "awq": "W4A16_ASYM"}
SCALE_BYTES = 2  # scales in the compute dtype: bf16 / fp16 on a GPU (fp32 on the CPU: +2 B)
ESTIMATE_SHAPE = (4096, 4096)


@dataclass(frozen=True)
class Calibrated:
    """Weights `bits`-bit in groups of `group` input columns, chosen by `method` from calibration
    activations; activations stay in the compute dtype."""

    method: str  # "gptq" | "awq"
    bits: int = 4
    group: int = 128

    backend: ClassVar[str] = "llmcompressor"  # the importable module that calibrates
    extra: ClassVar[str | None] = "calibration"
    needs_gpu: ClassVar[bool] = False
    # compressed-tensors wraps each linear's forward in Python hooks (and decompresses on the
    # first call); not checked with torch._dynamo.explain, so not claimed.
    compile_friendly: ClassVar[bool] = False

    @property
    def symmetric(self) -> bool:
        return METHODS[self.method] == "W4A16"

    @property
    def quality_tier(self) -> int:
        # a 4-bit row; recommend breaks ties among 4-bit rows with measured results
        return 2

    def hf_config(self, options: Any, compute_dtype: torch.dtype) -> Any | None:
        return None

    def after_load(self, model: Any, options: Any, compute_dtype: torch.dtype) -> None:
        return None

    def prepare_checkpoint(self, model_dir: Path, options: Any) -> Path:
        from quantbench.calibration.checkpoint import calibrated_checkpoint

        return calibrated_checkpoint(self, model_dir, options)

    def linear_bytes(self, in_features: int, out_features: int) -> float:
        group = group_for(in_features, self.group)
        if group is None:  # left in the compute dtype
            return 2.0 * in_features * out_features
        groups = out_features * -(-in_features // group)
        zero_points = 0 if self.symmetric else groups * self.bits / 8
        return in_features * out_features * self.bits / 8 + groups * SCALE_BYTES + zero_points

    @property
    def weight_bits(self) -> float:
        rows, cols = ESTIMATE_SHAPE
        return 8 * self.linear_bytes(cols, rows) / (rows * cols)


@dataclass(frozen=True)
class AsSaved:
    """A checkpoint that is already quantized (its config.json has a quantization_config):
    loaded as saved, measured as its own row."""

    backend: ClassVar[str] = "transformers"
    extra: ClassVar[str | None] = None
    needs_gpu: ClassVar[bool] = False
    compile_friendly: ClassVar[bool] = False
    quality_tier: ClassVar[int] = 2

    def hf_config(self, options: Any, compute_dtype: torch.dtype) -> Any | None:
        return None

    def after_load(self, model: Any, options: Any, compute_dtype: torch.dtype) -> None:
        return None

    def prepare_checkpoint(self, model_dir: Path, options: Any) -> Path:
        from quantbench.models import load_config

        config = load_config(str(model_dir), trust_remote_code=options.trust_remote_code)
        quant = getattr(config, "quantization_config", None)
        if quant is None:
            raise QuantbenchError(
                f"'{model_dir}' has no quantization_config in its config.json; precision 'as-saved' "
                "measures pre-quantized checkpoints (GPTQ, AWQ, compressed-tensors)"
            )
        method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
        needed = {"compressed-tensors": "compressed_tensors", "gptq": "gptqmodel", "awq": "gptqmodel"}
        module = needed.get(str(getattr(method, "value", method)))
        if module and not _importable(module):
            raise QuantbenchError(
                f"'{model_dir}' is a {method} checkpoint; loading it needs {module.replace('_', '-')}: "
                f"pip install {module.replace('_', '-')}"
            )
        return model_dir

    def linear_bytes(self, in_features: int, out_features: int) -> float:
        raise QuantbenchError("precision 'as-saved' has no fixed layout; inspect the checkpoint instead")


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def calibration_metrics(model_dir: str | Path) -> dict[str, Any]:
    """Calibration time, peak memory and settings recorded beside a calibrated checkpoint."""
    path = Path(model_dir) / METADATA_FILE
    if not path.is_file():
        return {}
    meta = json.loads(path.read_text())
    return {k: meta[k] for k in ("calibration_seconds", "calibration_peak_bytes",
                                 "calibration_peak_rss_bytes", "calibration_samples",
                                 "calibration_seq_len") if meta.get(k) is not None}
