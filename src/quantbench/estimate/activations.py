"""KV cache and activations: what inference and training hold beside the weights."""

from __future__ import annotations

from quantbench.estimate.skeleton import Architecture
from quantbench.schemes import Scheme


def kv_cache_bytes(arch: Architecture, batch: int, seq_len: int, act_bytes: int) -> int:
    """Keys and values of every layer, stored in the activation dtype."""
    return 2 * arch.layers * batch * seq_len * arch.kv_heads * arch.head_dim * act_bytes


def inference_activation_bytes(arch: Architecture, batch: int, seq_len: int, act_bytes: int,
                               scheme: Scheme, big: tuple[int, int]) -> int:
    """Transient peak of one prefill layer; attention is fused (SDPA), so no seq^2 matrix."""
    tokens = batch * seq_len
    kv_dim = arch.kv_heads * arch.head_dim
    # residual + normed hidden, q/k/v, then the MLP's gate, up and their product at once
    per_token = (2 * arch.hidden + arch.hidden + 2 * kv_dim + 3 * arch.intermediate) * act_bytes
    logits = batch * arch.vocab * 4 * 2  # generate keeps only the last position, in fp32
    extra = scheme.matmul_workspace_bytes(tokens, big[0], big[1], act_bytes) if scheme.quantizes else 0
    return tokens * per_token + logits + extra


def training_activation_bytes(arch: Architecture, tokens: int, act_bytes: int,
                              lora: list[tuple[int, int]], r: int) -> tuple[int, int]:
    """(without, with gradient checkpointing): what autograd keeps for the backward pass."""
    h, kv, i = arch.hidden, arch.kv_heads * arch.head_dim, arch.intermediate
    norms = 2 * (8 + act_bytes) * h  # RMSNorm saves its fp32 upcast and normalised output
    attention = act_bytes * (5 * h + 4 * kv)  # projection input, roped q/k, SDPA q/k/v/out
    mlp = act_bytes * (h + 4 * i)  # input, gate, silu(gate), up, product
    # LoRA: dropout output + mask per adapted linear, and lora_A's output
    adapters = sum((act_bytes + 1) * n_in + act_bytes * r for n_in, _ in lora) // arch.layers
    per_layer = tokens * (norms + attention + mlp + adapters)
    logits = tokens * arch.vocab * (act_bytes + 4 + 4)  # logits, fp32 upcast, its gradient
    full = arch.layers * per_layer + logits
    checkpointed = arch.layers * tokens * h * act_bytes + per_layer + logits
    return full, checkpointed
