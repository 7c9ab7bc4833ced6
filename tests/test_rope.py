"""The rotary embedding and cache write kernel (kernels/rope.py), run by Triton's interpreter,
against transformers' own apply_rotary_pos_emb and StaticLayer.update."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton sees a kernel: CPU tensors

import pytest
import torch

pytest.importorskip("triton")

from conftest import static_cache_step  # noqa: E402

from quantbench.kernels.rope import rope_store  # noqa: E402


class _Layer:
    """What rope_store writes: a StaticLayer's tensors, after its prefill wrote `filled` slots."""

    def __init__(self, batch: int, kv_heads: int, length: int, dim: int, filled: int, dtype: torch.dtype):
        self.keys = torch.randn(batch, kv_heads, length, dim).to(dtype)
        self.values = torch.randn(batch, kv_heads, length, dim).to(dtype)
        self.cumulative_length = torch.tensor([filled])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("heads", "kv_heads", "batch", "angle_rows"),
                         [(9, 3, 3, 1), (4, 4, 2, 2)])  # grouped, a non-power-of-2 count; one angle row or one per row
def test_rope_store_is_transformers_rotary_and_cache_update(dtype, heads, kv_heads, batch, angle_rows):
    from transformers import StaticCache
    from transformers.models.llama.modeling_llama import LlamaConfig, apply_rotary_pos_emb

    dim, length, filled = 16, 12, 7
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, 1, n * dim, generator=gen).to(dtype) for n in (heads, kv_heads, kv_heads))
    # transformers builds cos / sin from cache_position alone: one row that every batch row reads
    angle = torch.randn(angle_rows, 1, dim, generator=gen) * 3
    cos, sin = angle.cos().to(dtype), angle.sin().to(dtype)
    ours = _Layer(batch, kv_heads, length, dim, filled, dtype)
    config = LlamaConfig(hidden_size=heads * dim, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         num_hidden_layers=1)
    cache = StaticCache(config=config, max_cache_len=length)
    layer = cache.layers[0]
    layer.lazy_initialization(ours.keys, ours.values)
    layer.keys.copy_(ours.keys)
    layer.values.copy_(ours.values)
    layer.cumulative_length.fill_(filled)

    def heads_of(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, 1, -1, dim).transpose(1, 2)

    q_ref, k_ref = apply_rotary_pos_emb(heads_of(q), heads_of(k), cos, sin)
    layer.update(k_ref, heads_of(v))
    got = rope_store(q, k, v, cos, sin, ours.keys, ours.values, ours.cumulative_length)
    if dtype == torch.bfloat16:  # the interpreter's own bf16 conversions: a step or two apart
        assert torch.allclose(got.float(), q_ref.float(), rtol=2**-5, atol=2**-6)  # it truncates
        assert torch.allclose(ours.keys.float(), layer.keys.float(), rtol=2**-5, atol=2**-6)
        assert torch.equal(ours.values, layer.values)
    else:
        assert torch.equal(got, q_ref)  # eager's three roundings, bit for bit
        assert torch.equal(ours.keys, layer.keys) and torch.equal(ours.values, layer.values)
    untouched = torch.ones(length, dtype=torch.bool)
    untouched[filled] = False  # every other slot as it was
    assert torch.equal(ours.keys[:, :, untouched], layer.keys[:, :, untouched])
    assert int(ours.cumulative_length) == int(layer.cumulative_length) == filled + 1


def test_a_fused_block_writes_the_cache_as_transformers_does():
    """Real SmolLM2 (two blocks) on a StaticCache: with the plan serving, each layer's attention
    step goes through rope_store, and the logits and the cache after the step are eager's, also
    when the step is compiled (the cache mutation through the custom op)."""
    import quantbench
    from quantbench.kernels import install, rope

    model = quantbench.load("smollm2-135m", "fp32", device="cpu").model
    model.model.layers = model.model.layers[:2]
    model.config.num_hidden_layers = 2
    kinds = ("dense", "attention", "fuse", "rope")
    plan = install(model, allow_cpu=True, kinds=kinds)
    plan.kinds = frozenset(kinds)  # as the fast engine chooses kinds (no GEMV kinds on the CPU)
    calls = []
    original = rope.rope_store
    rope.rope_store = lambda *a: calls.append(1) or original(*a)
    try:
        expected, eager_cache = static_cache_step(model, plan, False)
        assert not calls
        got, fused_cache = static_cache_step(model, plan, True)
        compiled = torch.compile(lambda *a, **kw: model(*a, **kw).logits, backend="aot_eager")
        compiled_logits, compiled_cache = static_cache_step(model, plan, True, compiled)
    finally:
        rope.rope_store = original
    assert len(calls) >= 4  # two layers, eager and compiled
    assert plan.describe()["layers"]["rope"] == "rotary embedding and KV-cache write in one kernel, x2"
    for ours, theirs in zip(fused_cache.layers, eager_cache.layers, strict=True):
        assert int(ours.cumulative_length) == int(theirs.cumulative_length) == 10
        assert torch.allclose(ours.keys, theirs.keys, rtol=1e-5, atol=1e-5)  # the GEMVs' fp32 sums
        assert torch.allclose(ours.values, theirs.values, rtol=1e-5, atol=1e-5)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(compiled_logits, got)
    for ours, theirs in zip(compiled_cache.layers, fused_cache.layers, strict=True):
        assert torch.equal(ours.keys, theirs.keys) and int(ours.cumulative_length) == 10
    plan.uninstall()


def test_rope_store_leaves_a_full_cache_as_it_is():
    keys, values = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)
    before = keys.clone(), values.clone()
    q, k, v = torch.randn(1, 1, 32), torch.randn(1, 1, 16), torch.randn(1, 1, 16)
    cos, sin = torch.ones(1, 1, 8), torch.zeros(1, 1, 8)
    out = rope_store(q, k, v, cos, sin, keys, values, torch.tensor([4]))
    assert torch.equal(out.reshape(1, -1), q.reshape(1, -1))  # cos 1, sin 0: q as it was
    assert torch.equal(keys, before[0]) and torch.equal(values, before[1])  # nothing written past the end

