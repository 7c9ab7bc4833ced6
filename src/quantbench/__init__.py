"""quantbench: which precision should I run this LLM in, on this GPU, and what does it cost me?"""

from quantbench.errors import QuantbenchError
from quantbench.inspect import Inspection, inspect_model
from quantbench.loading import Loaded, load
from quantbench.precisions import PRECISIONS, LoadOptions, Precision, get_precision

__all__ = [
    "PRECISIONS",
    "Inspection",
    "LoadOptions",
    "Loaded",
    "Precision",
    "QuantbenchError",
    "get_precision",
    "inspect_model",
    "load",
]
__version__ = "0.1.0"
