"""Decode kernels of quantbench's own: Triton GEMVs that read bitsandbytes' (and torch's) weight
storage exactly as it is, so a model's checkpoint and numerics stay its library's.

    plan = install(model)      # layers get kernel forwards, disabled
    plan.enabled = True        # the fast engine turns them on around its decode step
    plan.describe()            # which kernel serves which layer

KERNELS names the choices the fast engine offers: "quantbench" (these) or "bnb" (the layers' own
forwards: bitsandbytes' kernels, cuBLAS). gemv.py holds the kernels and their numerics, layers.py
the routing and the merged q/k/v and gate/up launches, storage.py the weight formats, fusion.py
and prologue.py the block fusion, attention.py and rope.py the attention step, overlap.py how
launches overlap on Hopper, config.py the launch shapes and modes.
"""

from __future__ import annotations

from quantbench.errors import QuantbenchError

KERNELS = ("quantbench", "bnb")
# quantbench's kernels: GEMVs for dense, 4-bit and LLM.int8 layers, the decode attention over the
# static cache, and the block fusion (norms, residual adds and silu * up inside the GEMVs;
# fusion.py). The "quantbench" choice uses DEFAULT_KINDS (FastEngine(..., kernel_kinds=) picks
# others): all of them, each measured faster end to end on an H100 than the layers' own kernels
# (benchmarks/NOTES-decode.md; tinyllama nf4 1.32 ms/token against 1.66 with bitsandbytes'
# gemv_4bit and the other kinds the same).
# "rope" (the rotary embedding and the cache write in one kernel, rope.py) took llama-2-7b-arch
# nf4 from 4.39 to 3.60 ms/token on an H100, with the same tokens, and leaves the SmolLM2
# equivalence KL where it was (benchmarks/results/h100/kernels/).
ALL_KINDS = ("dense", "4bit", "int8", "attention", "fuse", "rope")
DEFAULT_KINDS = ALL_KINDS


def check_choice(name: str) -> str:
    key = name.strip().lower()
    if key not in KERNELS:
        raise QuantbenchError(f"unknown kernels '{name}'; choose from: {', '.join(KERNELS)}")
    return key


def install(model, **options):  # noqa: ANN001, ANN003, ANN201
    """layers.install(model, allow_cpu=, skip=, kinds=, plan=), imported lazily: Triton loads
    only when kernels are used."""
    from quantbench.kernels.layers import install as _install

    return _install(model, **options)


__all__ = ["ALL_KINDS", "DEFAULT_KINDS", "KERNELS", "check_choice", "install"]
