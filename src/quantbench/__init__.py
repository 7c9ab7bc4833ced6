"""quantbench: which precision should I run this LLM in, on this GPU, and what does it cost me?

    import quantbench
    loaded = quantbench.load("smollm2-135m", "nf4")          # model, tokenizer, inspection
    results = quantbench.run("smollm2-135m", "fp16,int8,nf4")  # one Result per precision
    quantbench.estimate("llama-2-7b-arch")                     # memory from config.json alone
    quantbench.recommend("llama-2-7b-arch", vram="8GiB")

Names are imported on first use, so `import quantbench.report` never pulls in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from quantbench.errors import QuantbenchError

_LAZY = {
    "load": "quantbench.loading",
    "Loaded": "quantbench.loading",
    "Inspection": "quantbench.inspect",
    "inspect_model": "quantbench.inspect",
    "PRECISIONS": "quantbench.precisions",
    "LoadOptions": "quantbench.precisions",
    "Precision": "quantbench.precisions",
    "get_precision": "quantbench.precisions",
    "run": "quantbench.runner",
    "Result": "quantbench.results",
    "RunSpec": "quantbench.results",
    "Workload": "quantbench.results",
    "read_results": "quantbench.results",
    "estimate": "quantbench.estimate",
    "Estimate": "quantbench.estimate",
    "EstimateSettings": "quantbench.estimate",
    "recommend": "quantbench.recommend",
    "Recommendation": "quantbench.recommend",
    "finetune": "quantbench.training",
    "FinetuneConfig": "quantbench.training",
    "merge_adapter": "quantbench.training",
    "quiet_libraries": "quantbench.logfilter",
}

__all__ = ["QuantbenchError", *_LAZY]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'quantbench' has no attribute '{name}'")
