"""torchao, HQQ and optimum-quanto as rows of the one precision table.

Each backend that runs on the CPU loads the real SmolLM2, is inspected (layer classes, bits per
quantized weight, footprint below fp16), scores a perplexity close to fp32 on our held-out text,
and its `compile_friendly` flag is checked against torch.compile's graph capture.
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest
import torch

import quantbench
from quantbench import QuantbenchError
from quantbench.loading import check_backend
from quantbench.precisions import PRECISIONS, get_precision

MODEL = "smollm2-135m"
PASSAGE_CHARS = 1500  # about 300 tokens: enough for a stable loss, fast on a shared CPU
# HQQ's optimiser takes ~3 s per linear on this CPU (minutes for the whole model), so the test
# quantizes the first two decoder layers only; the rest stay in bf16, so the footprint check
# still means something. Full-model numbers are in docs/backends.md.
HQQ_SKIP = ("lm_head", r"model\.layers\.([2-9]|[12][0-9])")
OTHER_BACKENDS = [p for p in PRECISIONS.values() if p.backend not in ("torch", "bitsandbytes")]


def _passage() -> str:
    path = Path(quantbench.__file__).parent / "data" / "heldout.txt"
    return path.read_text()[:PASSAGE_CHARS]


def _perplexity(loaded: quantbench.Loaded) -> float:
    ids = loaded.tokenizer(_passage(), return_tensors="pt").input_ids
    with torch.no_grad():
        return math.exp(loaded.model(ids, labels=ids).loss.item())


def _quantized_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    from quantbench.inspect import _is_quantized

    return [m for m in model.modules() if _is_quantized(m)]


def _bits_per_quantized_weight(loaded: quantbench.Loaded) -> float:
    """What the inspection's footprint implies per quantized weight, the rest at its dtype."""
    info = loaded.inspection
    quantized = sum(m.in_features * m.out_features for m in _quantized_modules(loaded.model))
    rest = info.parameters - quantized
    buffers = sum(b.numel() * b.element_size() for _, b in loaded.model.named_buffers())
    rest_bytes = rest * loaded.precision.unquantized_dtype(loaded.compute_dtype).itemsize
    return 8 * (info.footprint_bytes - rest_bytes - buffers) / quantized


def _graph_breaks(loaded: quantbench.Loaded) -> int:
    mlp = loaded.model.model.layers[0].mlp
    hidden = torch.randn(1, 8, loaded.model.config.hidden_size, dtype=loaded.compute_dtype)
    torch._dynamo.reset()
    try:
        return torch._dynamo.explain(mlp)(hidden).graph_break_count
    finally:
        torch._dynamo.reset()


@pytest.fixture(scope="module")
def fp32(loaded_model) -> tuple[int, float]:
    """Logical parameter count and perplexity of the unquantized model."""
    loaded = loaded_model("fp32")  # shared with the other test files
    return loaded.inspection.parameters, _perplexity(loaded)


# The table counts constants at 16 bits (GPU); on the CPU they are fp32. Per-row scales cost
# < 0.06 bit more; quanto int4 shrinks its group to 96 on SmolLM2's 576-wide rows, and its
# fp32 scale + shift then cost 0.67 bit, not 0.25.
BITS_SLACK = {"quanto-int4": 0.45}
# precision, layer class, quant type, quantized linears, max perplexity ratio to fp32, overrides
CPU_CASES = [
    ("torchao-int8", "Linear[Int8Tensor]", "int8", 210, 1.05, {}),
    ("quanto-int8", "QLinear", "int8", 210, 1.05, {}),
    ("quanto-int4", "QLinear", "int4", 210, 2.5, {}),
    ("hqq-4bit", "HQQLinear", "4bit", 14, 1.5, {"skip_modules": HQQ_SKIP, "compute_dtype": "bf16"}),
]


@pytest.mark.parametrize(("name", "layer", "qtype", "count", "max_ratio", "overrides"), CPU_CASES,
                         ids=[c[0] for c in CPU_CASES])
def test_backend_quantizes_smollm2_on_cpu(fp32, name, layer, qtype, count, max_ratio, overrides):
    pytest.importorskip(get_precision(name).backend)
    loaded = quantbench.load(MODEL, name, device="cpu", **overrides)
    info = loaded.inspection

    assert info.quantized_layers == {layer: count}
    assert info.quant_types == {qtype: count}
    assert info.unquantized_linears[-1] == "lm_head"
    assert info.parameters == fp32[0]  # logical weights, whatever the packing
    assert info.footprint_bytes < info.fp16_footprint_bytes
    bits = _bits_per_quantized_weight(loaded)
    assert 0 <= bits - loaded.precision.weight_bits < BITS_SLACK.get(name, 0.1), bits

    ratio = _perplexity(loaded) / fp32[1]
    assert 0.95 < ratio < max_ratio, ratio
    assert (_graph_breaks(loaded) == 0) == loaded.precision.compile_friendly


@pytest.mark.parametrize("name", ["int8", "nf4"])
def test_bitsandbytes_compile_flag_matches_graph_capture(loaded_model, name):
    """LLM.int8 splits outliers with a data-dependent shape; 4-bit matmuls are one graph."""
    loaded = loaded_model(name)  # shared with the other test files
    assert (_graph_breaks(loaded) == 0) == loaded.precision.compile_friendly


@pytest.mark.parametrize("precision", OTHER_BACKENDS, ids=lambda p: p.name)
def test_missing_backend_is_one_line_with_the_extra(monkeypatch, precision):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == precision.backend else real(name, *a))
    device = "cuda" if precision.needs_gpu else "cpu"
    with pytest.raises(QuantbenchError) as err:
        check_backend(precision, device)
    message = str(err.value)
    assert "\n" not in message and f"quantbench[{precision.extra}]" in message


@pytest.mark.parametrize("precision", [p for p in OTHER_BACKENDS if p.needs_gpu],
                         ids=lambda p: p.name)
def test_gpu_only_entry_on_cpu_says_so_in_one_line(precision):
    with pytest.raises(QuantbenchError, match="needs a CUDA GPU"):
        quantbench.load(MODEL, precision, device="cpu")


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is new in Python 3.11")
def test_every_entry_states_its_extra_bits_and_compile_flag():
    import tomllib

    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    for precision in OTHER_BACKENDS:
        assert precision.extra in extras, precision.name
        assert precision.quantizes and 3 < precision.weight_bits <= 8.5
        assert isinstance(precision.compile_friendly, bool)
        digits = re.search(r"(\d)bit|int(\d)|fp(\d)", precision.name)
        assert digits and int(next(g for g in digits.groups() if g)) <= precision.weight_bits



def test_decode_kernels_leave_layers_that_another_library_runs():
    """The fast engine's dense GEMV serves only a Linear that computes x @ W.T from a plain
    tensor: a forward another library swapped in (compressed-tensors rebuilds the weight and may
    quantize the activation) and tensor-subclass weights (torchao) keep their own forward."""
    from torch import nn

    from quantbench.kernels import install

    class Wrapped(torch.Tensor):
        pass

    model = nn.ModuleDict({name: nn.Linear(16, 16, bias=False) for name in ("plain", "swapped", "subclass", "hooked")})
    swapped = model["swapped"]
    swapped.forward = math.prod.__call__  # a callable defined outside torch and the class: foreign
    model["subclass"].weight = nn.Parameter(torch.randn(16, 16).as_subclass(Wrapped), requires_grad=False)
    hooked = model["hooked"]
    hooked._hf_hook = object()  # accelerate's device hook wraps the class's own forward
    hooked.forward = nn.Linear.forward.__get__(hooked)

    plan = install(model, allow_cpu=True, kinds=("dense",))
    try:
        served = {name for launch in plan.launches for name in launch.names}
        assert served == {"plain", "hooked"}
        assert plan.left["swapped"].startswith("forward replaced by")
        assert "weights held as Wrapped" in plan.left["subclass"]
    finally:
        plan.uninstall()
