"""Fewer kernels per decode step: a transformer block's elementwise work moves into its GEMVs.

A Llama-style block (Llama, Mistral, Qwen2: RMSNorm, attention, residual, RMSNorm, SiLU MLP,
residual) whose q/k/v, o, gate/up and down are all served by the plan runs, while the plan serves
it, as
    qkv   = GEMV(RMSNorm_1(h))            the norm in the prologue (prologue.py)
    h'    = h + GEMV_o(attention(...))    the residual in o's epilogue
    out   = h' + GEMV_down(silu * up of GEMV_gate_up(RMSNorm_2(h')))
so the block's two norm kernels, its two residual adds and its silu * mul are gone. With the
"rope" kind too, the rotary embedding and the cache write are one kernel (rope.py) between the
q/k/v GEMV and the attention kernel, in place of five to seven. An MLP alone (other blocks)
still gets silu(gate) * up in the down GEMV. The roundings are eager torch's (prologue.py), so the fused
block computes the same function as the module's own forward up to the order of fp32 sums.
Everything runs through the layers' own forwards when the plan does not serve (prefill, large
batches, the "fuse" kind not chosen).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

BLOCKS = ("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer")


def fuse(model: nn.Module, plan: Any) -> None:
    launch_of = {id(m): launch for launch in plan.launches for m in launch.modules}
    done = {id(m) for modules in plan.fused.values() for m in modules}
    for module in model.modules():
        if id(module) in done:
            continue
        if type(module).__name__ in BLOCKS and (parts := _block_parts(module, launch_of)):
            _override(plan, module, "block", _block_forward(plan, module, *parts))
            _override(plan, module.self_attn, "rope", _rope_forward(plan, module.self_attn))
            done.add(id(module.mlp))
            qkv, _, gate_up, down = parts[:4]
            qkv.prologue = gate_up.prologue = "RMSNorm"
            down.prologue = "silu * up"
        elif parts := _mlp_parts(module, launch_of):
            _override(plan, module, "act_fn", _mlp_forward(plan, *parts))
            parts[1].prologue = "silu * up"


def _override(plan: Any, module: nn.Module, what: str, make: Callable) -> None:
    previous = module.__dict__.get("forward")
    plan._restore.append((module, previous))
    module.forward = make(previous or type(module).forward.__get__(module))
    plan.fused.setdefault(what, []).append(module)


def _mlp_parts(mlp: nn.Module, launch_of: dict) -> tuple | None:
    gate, up, down = (getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj"))
    act = getattr(mlp, "act_fn", None)
    if gate is None or up is None or down is None or type(act).__name__ not in ("SiLU", "SiLUActivation"):
        return None
    gate_up, down_launch = launch_of.get(id(gate)), launch_of.get(id(down))
    if gate_up is None or down_launch is None or gate_up.modules != [gate, up]:
        return None
    return gate_up, down_launch


def _norm(module: nn.Module) -> tuple[torch.Tensor, float] | None:
    weight, eps = getattr(module, "weight", None), getattr(module, "variance_epsilon", None)
    if "RMSNorm" not in type(module).__name__ or weight is None or eps is None:
        return None
    return weight, float(eps)


def _block_parts(block: nn.Module, launch_of: dict) -> tuple | None:
    attn, mlp = getattr(block, "self_attn", None), getattr(block, "mlp", None)
    norms = [_norm(getattr(block, n, None)) for n in ("input_layernorm", "post_attention_layernorm")]
    if attn is None or mlp is None or None in norms or (parts := _mlp_parts(mlp, launch_of)) is None:
        return None
    q, k, v, o = (getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    qkv, o_launch = launch_of.get(id(q)), launch_of.get(id(o))
    if qkv is None or o_launch is None or qkv.modules != [q, k, v] or o_launch.modules != [o]:
        return None
    return qkv, o_launch, *parts, *norms


def _serves(plan: Any, x: torch.Tensor, *launches: Any) -> bool:
    return "fuse" in plan.kinds and all(plan.serves(x, launch.dtype, launch.base) for launch in launches)


def _mlp_forward(plan: Any, gate_up: Any, down: Any) -> Callable:
    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            if not _serves(plan, x, gate_up, down):
                return original(x)
            return down.call(gate_up.call(x, 0, gate_up.splits[-1]), 0, down.splits[-1], act=True)

        return forward

    return make


def _block_forward(plan: Any, block: nn.Module, qkv: Any, o: Any, gate_up: Any, down: Any,
                   norm_1: tuple, norm_2: tuple) -> Callable:
    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if args or not _serves(plan, hidden_states, qkv, o, gate_up, down):
                return original(hidden_states, *args, **kwargs)
            # q/k/v read RMSNorm_1(h) themselves; o adds h to its result (the residual)
            qkv.fusion = (hidden_states, {"norm": norm_1})
            o.fusion = (None, {"res": hidden_states})  # o's input is made inside the attention
            after_attention, _ = block.self_attn(hidden_states=hidden_states, **kwargs)
            middle = gate_up.call(after_attention, 0, gate_up.splits[-1], norm=norm_2)
            return down.call(middle, 0, down.splits[-1], act=True, res=after_attention)

        return forward

    return make


def _static_layer(cache: Any, index: int) -> Any:
    """The layer's transformers StaticLayer when rope.py can write it (full, initialized, not
    offloaded: Cache.update would move an offloaded layer first)."""
    if getattr(cache, "offloading", False):
        return None
    layers = getattr(cache, "layers", None)
    layer = layers[index] if layers is not None and 0 <= index < len(layers) else None
    if type(layer).__name__ != "StaticLayer" or not getattr(layer, "is_initialized", False):
        return None
    from quantbench.kernels.attention import HEAD_DIMS

    return layer if layer.keys.shape[-1] in HEAD_DIMS else None


def _rope_forward(plan: Any, attn: nn.Module) -> Callable:
    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
            from quantbench.kernels.attention import attention_forward
            from quantbench.kernels.rope import rope_store_op

            embeddings, mask = kwargs.get("position_embeddings"), kwargs.get("attention_mask")
            layer = _static_layer(kwargs.get("past_key_values"), getattr(attn, "layer_idx", -1))
            if (args or layer is None or embeddings is None or hidden_states.shape[1] != 1 or "rope" not in plan.kinds
                    or getattr(attn, "quantbench_plan", None) is not plan or not plan.serves_attention(hidden_states)):
                return original(hidden_states, *args, **kwargs)
            q, k, v = attn.q_proj(hidden_states), attn.k_proj(hidden_states), attn.v_proj(hidden_states)
            query = rope_store_op(q, k, v, *embeddings, layer.keys, layer.values, layer.cumulative_length)
            out, weights = attention_forward(attn, query, layer.keys, layer.values, mask, scaling=attn.scaling)
            return attn.o_proj(out.reshape(*hidden_states.shape[:-1], -1).contiguous()), weights

        return forward

    return make
