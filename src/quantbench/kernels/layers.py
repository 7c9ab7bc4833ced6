"""Route a model's linear layers through the GEMV kernels during decode.

`install(model)` finds every linear the kernels can serve (nn.Linear in fp16/bf16/fp32,
bitsandbytes Linear4bit NF4/FP4, Linear8bitLt with int8 weights) and gives it a forward that
calls the kernel while the plan is enabled and the input has at most MAX_ROWS rows; otherwise
the layer's own forward runs (prefill, large batches, plan disabled), so bitsandbytes' kernels
stay in place for everything else.

q/k/v and gate/up projections of one block are merged into one launch: their weights are moved
into one buffer (the layers keep views of it, so memory does not grow) and the first projection
computes all rows; the others return their slice of that result. This is exact: rows are
independent, and bitsandbytes' 4-bit blocks never straddle a row (K % blocksize == 0). A layer
called with some other input than the first one's computes its own slice of the buffer.

Double-quantized 4-bit absmax (uint8 codes + a second-level table) is expanded once to fp32 with
bitsandbytes' own dequantize_blockwise + offset, the same values its dequantize_4bit computes on
every call; that costs 4 bytes per 64 weights beside the original codes, which bitsandbytes' path
(prefill) still reads.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from quantbench.kernels import DEFAULT_KINDS, config

MAX_ROWS = 8  # decode batches up to this run the GEMVs; above, a GEMM (the layer's own) is faster
GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # in the order blocks call them
FUSIONS = {  # fusion.py's kinds of fused modules, as describe() names them
    "block": "input and post-attention RMSNorms in the q/k/v and gate/up GEMVs, residual adds in o and down",
    "act_fn": "silu(gate) * up in the down GEMV's prologue",
    "rope": "rotary embedding and KV-cache write in one kernel",
}


@dataclass
class _Launch:
    """One kernel launch serving one linear or a merged group of them."""

    base: str  # "dense" | "4bit" | "int8": which kernel
    kind: str  # what describe() says: "dense", "nf4", "nf4-dq", "fp4", "int8 outliers>=6 ..."
    names: list[str]
    modules: list[nn.Module]
    splits: list[int]  # output row offsets of each member, then the total
    call: Callable[[torch.Tensor, int, int], torch.Tensor]  # (x, first row, end row) -> out
    dtype: torch.dtype | None  # the activation dtype served (None: any float)
    plan: KernelPlan
    pending: tuple[torch.Tensor, torch.Tensor] | None = None
    # (x or None: any x, {"norm": ..., "res": ...}) for the next call (fusion.py)
    fusion: tuple[torch.Tensor | None, dict[str, Any]] | None = None
    prologue: str = ""  # the row work fusion.py gives its activation: "RMSNorm", "silu * up"

    def forward(self, index: int, original: Callable[..., Any]) -> Callable[..., Any]:
        last = len(self.names) - 1
        first_row, end_row = self.splits[index], self.splits[index + 1]
        total = self.splits[-1]

        def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if args or kwargs or not self.plan.serves(x, self.dtype, self.base):
                return original(x, *args, **kwargs)
            if index == 0:
                fusion, self.fusion = self.fusion, None
                extra = fusion[1] if fusion is not None and (fusion[0] is None or fusion[0] is x) else {}
                out = self.call(x, 0, total, **extra)
                if last:
                    self.pending = (x, out)
                return out[..., first_row:end_row] if last else out
            pending = self.pending
            if pending is not None and pending[0] is x:
                if index == last:
                    self.pending = None
                return pending[1][..., first_row:end_row]
            return self.call(x, first_row, end_row)

        return forward


@dataclass
class KernelPlan:
    """Which kernel serves which layer; `enabled` switches them on (the fast engine's decode)."""

    launches: list[_Launch] = field(default_factory=list)
    left: dict[str, str] = field(default_factory=dict)  # linear name -> why its own forward stays
    enabled: bool = False
    kinds: frozenset[str] = frozenset(DEFAULT_KINDS)  # which kernels serve while enabled
    installed: set[str] = field(default_factory=set)  # kinds whose layers install() has set up
    allow_cpu: bool = False  # tests run the kernels on CPU tensors under Triton's interpreter
    _restore: list[tuple[nn.Module, Any]] = field(default_factory=list)
    attention: list[nn.Module] = field(default_factory=list)  # layers on the decode attention
    fused: dict[str, list[nn.Module]] = field(default_factory=dict)  # fusion.py: what -> modules
    attention_restore: tuple[Any, str] | None = None  # (config, implementation before)

    def serves(self, x: torch.Tensor, dtype: torch.dtype | None, base: str) -> bool:
        on_device = x.device.type == "cuda" or self.allow_cpu
        dtype_ok = x.dtype == dtype if dtype is not None else x.dtype in (torch.float16, torch.bfloat16, torch.float32)
        rows_ok = x.numel() // x.shape[-1] <= MAX_ROWS
        return self.enabled and base in self.kinds and on_device and dtype_ok and rows_ok

    def serves_attention(self, query: torch.Tensor) -> bool:
        on_device = query.device.type == "cuda" or self.allow_cpu
        return self.enabled and "attention" in self.kinds and on_device and query.shape[0] <= MAX_ROWS

    def handles(self, module: nn.Module, kinds: frozenset[str] | None = None) -> bool:
        kinds = self.kinds if kinds is None else kinds
        return any(module in launch.modules and launch.base in kinds for launch in self.launches)

    def describe(self, kinds: frozenset[str] | None = None) -> dict[str, Any]:
        """{'q_proj+k_proj+v_proj': 'quantbench gemv nf4, merged, x22', ...} plus what stays."""
        kinds = self.kinds if kinds is None else kinds
        counts: dict[tuple[str, str], int] = {}
        for launch in self.launches:
            if launch.base not in kinds:
                for name in launch.names:
                    key = f"{_short(name)}: {launch.kind}, {launch.base} kernel not chosen"
                    counts[(key, "")] = counts.get((key, ""), 0) + 1
                continue
            kind = launch.kind
            once = config.rows_once(launch.base, launch.splits[-1], launch.modules[0].in_features)
            if launch.base == "int8" and once:
                kind += ", activation quantized once per launch"
            elif launch.prologue and once and "fuse" in kinds:
                kind += f", its {launch.prologue} once per launch"
            key = ("+".join(_short(n) for n in launch.names), kind)
            counts[key] = counts.get(key, 0) + 1
        layers = {
            names: (f"quantbench gemv {kind}{', merged' if '+' in names else ''}, x{n}" if kind
                    else f"own forward, x{n}")
            for (names, kind), n in counts.items()
        }
        left: dict[str, int] = {}
        for name, why in self.left.items():
            key = f"{_short(name)}: {why}"
            left[key] = left.get(key, 0) + 1
        layers |= {key: f"own forward, x{n}" for key, n in left.items()}
        for what, modules in self.fused.items():
            chosen = {"attention", "rope"} <= kinds if what == "rope" else "fuse" in kinds  # rope feeds the attention
            layers[what] = f"{FUSIONS[what]}{'' if chosen else ' (fusion not chosen)'}, x{len(modules)}"
        if self.attention:
            how = "quantbench decode attention" if "attention" in kinds else "SDPA (attention kernel not chosen)"
            layers["attention"] = f"{how}, x{len(self.attention)}"
        return {"kernels": "quantbench", "kinds": sorted(kinds), "max_rows": MAX_ROWS, "layers": layers,
                "modes": config.modes()}

    def uninstall(self) -> None:
        for module, previous in self._restore:
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous
        self._restore.clear()
        self.launches.clear()
        self.fused.clear()
        for module in self.attention:
            module.__dict__.pop("quantbench_plan", None)
        self.attention.clear()
        if self.attention_restore is not None:
            config, implementation = self.attention_restore
            config._attn_implementation = implementation
            self.attention_restore = None


def _short(name: str) -> str:
    return re.sub(r"\.\d+\.", ".*.", name).rsplit(".", 1)[-1]


def install(model: nn.Module, allow_cpu: bool = False, skip: tuple[str, ...] = (),
            kinds: tuple[str, ...] = DEFAULT_KINDS, plan: KernelPlan | None = None) -> KernelPlan:
    """Give every linear of `model` that one of `kinds` serves a kernel forward (disabled until
    plan.enabled); linears whose name ends with one of `skip` keep their own. With `plan`, adds
    to it (layers already served stay as they are). Only installed kinds touch their weights."""
    from quantbench.kernels.storage import describe_linear, merge

    plan = plan or KernelPlan(allow_cpu=allow_cpu)
    names = {module: name for name, module in model.named_modules()}
    done: set[int] = {id(m) for launch in plan.launches for m in launch.modules}
    for parent in model.modules():
        for group in GROUPS:
            members = [getattr(parent, n, None) for n in group]
            if any(m is None for m in members) or any(id(m) in done for m in members):
                continue
            specs = [describe_linear(m) for m in members]
            if all(isinstance(s, dict) and s["kind"] in kinds for s in specs) and _mergeable(specs):
                _add(plan, merge(members, specs), [names[m] for m in members], members, specs[0])
                done.update(id(m) for m in members)
    for name, module in model.named_modules():
        if id(module) in done or (skip and name.endswith(skip)):
            continue
        spec = describe_linear(module)
        if spec is None:
            continue
        if isinstance(spec, str):
            plan.left[name] = spec
            continue
        if spec["kind"] in kinds:
            _add(plan, merge([module], [spec]), [name], [module], spec)
            done.add(id(module))
        else:
            plan.left[name] = f"{spec['label']}, {spec['kind']} kernel not chosen"
    from quantbench.kernels.fusion import fuse

    fuse(model, plan)
    if "attention" in kinds and "attention" not in plan.installed:
        _install_attention(model, plan)
    plan.installed |= set(kinds)
    return plan


def _install_attention(model: nn.Module, plan: KernelPlan) -> None:
    """Point a model on transformers' SDPA attention at quantbench's (which falls back to SDPA for
    every call it does not serve); other attention implementations are left alone."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return
    from quantbench.kernels.attention import NAME, counters, register

    register()
    for module in model.modules():
        if hasattr(module, "num_key_value_groups") and hasattr(module, "layer_idx"):
            module.quantbench_plan = plan
            plan.attention.append(module)
            for param in module.parameters(recurse=True):  # now, outside any graph capture or pool
                counters(param.device)
    if plan.attention:
        plan.attention_restore = (config, config._attn_implementation)
        config._attn_implementation = NAME


def _mergeable(specs: list[dict]) -> bool:
    keys = ("kind", "in_features", "dtype", "blocksize", "threshold", "has_bias")
    return all(all(s.get(k) == specs[0].get(k) for k in keys) for s in specs)


def _add(plan: KernelPlan, call: Callable, names: list[str], members: list[nn.Module], spec: dict) -> None:
    splits = [0]
    for m in members:
        splits.append(splits[-1] + m.out_features)
    launch = _Launch(base=spec["kind"], kind=spec["label"], names=names, modules=members, splits=splits,
                     call=call, dtype=spec["dtype"], plan=plan)
    for name in names:
        plan.left.pop(name, None)
    for index, module in enumerate(members):
        previous = module.__dict__.get("forward")
        plan._restore.append((module, previous))
        module.forward = launch.forward(index, previous or type(module).forward.__get__(module))
    plan.launches.append(launch)
