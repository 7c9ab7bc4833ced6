"""The precision-table schemes of calibrated rows (gptq-4bit, awq-4bit) and of `as-saved`.

Both produce the folder that `from_pretrained` loads (`prepare_checkpoint`); the quantization
config travels inside that folder's config.json, so `hf_config` stays None (the default).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from quantbench.calibration.groups import group_for
from quantbench.errors import QuantbenchError
from quantbench.options import LoadOptions
from quantbench.schemes import HALF, Scheme

METADATA_FILE = "quantbench-calibration.json"
# What each method asks llm-compressor for: GPTQ symmetric (scale only), AWQ asymmetric
# (scale and zero point), the layouts of the libraries' W4A16 presets.
METHODS = {"gptq": "W4A16", "awq": "W4A16_ASYM"}


@dataclass(frozen=True)
class Calibrated(Scheme):
    """Weights `bits`-bit in groups of `group` input columns, chosen by `method` from calibration
    activations; activations stay in the compute dtype."""

    method: str = "gptq"  # "gptq" | "awq"
    bits: int = 4
    group: int = 128

    backend: ClassVar[str] = "llmcompressor"  # the importable module that calibrates
    extra: ClassVar[str | None] = "calibration"

    @property
    def compile_friendly(self) -> bool:
        # compressed-tensors wraps each linear's forward in Python (and decompresses on the
        # first call); not checked with torch._dynamo.explain, so not claimed
        return False

    @property
    def quality_tier(self) -> int:
        return 2  # a 4-bit row, like nf4; measured Results decide between them

    @property
    def dense_at_run_time(self) -> bool:
        # transformers has no int4 matmul for compressed-tensors' pack-quantized layout: the first
        # forward decompresses every quantized linear (H100: tinyllama-1.1b-arch gptq-4bit loads in
        # 727 MiB and peaks at 2.13 GiB generating, fp16 at 2.12)
        return True

    @property
    def symmetric(self) -> bool:
        return METHODS[self.method] == "W4A16"

    def prepare_checkpoint(self, model_dir: Path, options: LoadOptions) -> Path:
        from quantbench.calibration.checkpoint import calibrated_checkpoint

        return calibrated_checkpoint(self, model_dir, options)

    def keeps(self, in_features: int) -> bool:
        return group_for(in_features, self.group) is None  # no group divides the row

    def packed_bytes(self, in_features: int, out_features: int) -> float:
        return in_features * out_features * self.bits / 8

    def constant_bytes(self, in_features: int, out_features: int) -> float:
        """A scale per group (compute dtype) and, for AWQ, a zero point packed like the weights."""
        group = group_for(in_features, self.group)
        groups = out_features * math.ceil(in_features / group)
        return groups * HALF + (0 if self.symmetric else groups * self.bits / 8)


@dataclass(frozen=True)
class AsSaved(Scheme):
    """A checkpoint that is already quantized (its config.json has a quantization_config):
    loaded as saved, measured as its own row."""

    # backend stays "torch": transformers loads the checkpoint with the quantizer its config
    # names, and prepare_checkpoint says in one line which package that needs

    @property
    def compile_friendly(self) -> bool:
        return False

    @property
    def quality_tier(self) -> int:
        return 2

    @property
    def offloads(self) -> bool:
        # like int8-offload, not a size of its own (the checkpoint decides): estimate and the
        # default recommend set leave it out
        return True

    def prepare_checkpoint(self, model_dir: Path, options: LoadOptions) -> Path:
        from quantbench.models import load_config

        config = load_config(str(model_dir), trust_remote_code=options.trust_remote_code)
        quant = getattr(config, "quantization_config", None)
        if quant is None:
            raise QuantbenchError(
                f"'{model_dir}' has no quantization_config in its config.json; precision 'as-saved' "
                "measures pre-quantized checkpoints (GPTQ, AWQ, compressed-tensors)"
            )
        method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
        method = str(getattr(method, "value", method))
        module = {"compressed-tensors": "compressed_tensors", "gptq": "gptqmodel", "awq": "gptqmodel"}.get(method)
        if module and not _importable(module):
            package = module.replace("_", "-")
            raise QuantbenchError(f"'{model_dir}' is a {method} checkpoint; loading it needs {package}: "
                                  f"pip install {package}")
        return model_dir

    def packed_bytes(self, in_features: int, out_features: int) -> float:
        # no layout of its own; transformers runs compressed-tensors int4 decompressed, at 16 bits
        return HALF * in_features * out_features


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
