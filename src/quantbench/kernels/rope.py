"""The rotary embedding and the KV-cache write of a decode step in one kernel.

transformers' attention step for one new token spends five to seven small kernels between the
q/k/v GEMV and the attention: the rotary embedding of q and k, and StaticLayer.update (an arange
and an add for the write position, an index_copy for the keys and one for the values). This
kernel does all of it in one launch: it reads the layer's write position (its
`cumulative_length`), stores k (rotated) and v at that slot of the static cache, returns q
rotated as [B, heads, 1, head_dim], and advances the position by one, as StaticLayer.update does.

Roundings are eager torch's (transformers' apply_rotary_pos_emb): q * cos and rotate_half(q) *
sin each rounded to the activation dtype, then their sum rounded. One program serves the whole
step (B rows x all heads: a few thousand elements), so reading and advancing the position need
no coordination between programs; it reads all of a row's q, k, v and angles before it writes
anything, so a step waits for memory once. Under the launch overlap's explicit modes it launches
dependently (overlap.py: its program waits for the q/k/v GEMV before reading anything); "auto"
leaves it on a plain launch, as timed so far.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from quantbench.kernels.config import unfused_products
from quantbench.kernels.overlap import LAUNCH, launch_options, mode_for, wait_for_inputs


@triton.jit
def _rotate(x_ptr, cos_ptr, sin_ptr, heads, d, D: tl.constexpr, HEADS: tl.constexpr):
    """x [heads, D] at x_ptr rotated: x * cos + rotate_half(x) * sin, eager's roundings. cos and
    sin are read in the tile's own shape (each head's row again, from L1): a [D] vector broadcast
    to it would go through shared memory, behind barriers that wait for its load."""
    DT: tl.constexpr = x_ptr.dtype.element_ty
    ok = (heads[:, None] < HEADS) & (d[None, :] < D)  # full shape: the interpreter does not broadcast masks
    at = x_ptr + heads[:, None] * D
    x = tl.load(at + d[None, :], mask=ok, other=0.0)
    half = tl.where(d < D // 2, d + D // 2, d - D // 2)
    partner = tl.load(at + half[None, :], mask=ok, other=0.0).to(tl.float32)
    cos = tl.load(cos_ptr + heads[:, None] * 0 + d[None, :]).to(tl.float32)
    sin = tl.load(sin_ptr + heads[:, None] * 0 + d[None, :]).to(tl.float32)
    rotated = tl.where((d < D // 2)[None, :], -partner, partner).to(DT)
    first = (x.to(tl.float32) * cos).to(DT)
    second = (rotated.to(tl.float32) * sin).to(DT)
    return (first.to(tl.float32) + second.to(tl.float32)).to(DT), ok


@triton.jit
def _rope_store(q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, keys_ptr, values_ptr, length_ptr, out_ptr, B, L, stride_q,
                stride_k, stride_v, stride_cos, stride_sin, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l,
                H: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr, HP: tl.constexpr, KVHP: tl.constexpr,
                PDL: tl.constexpr = 0):
    wait_for_inputs(PDL)
    pos = tl.load(length_ptr)
    d = tl.arange(0, D)
    room = (pos + 0 * d[None, :]) < L  # a full cache is left as it is (eager's index_copy_ raises there)
    for b in range(B):
        cos, sin = cos_ptr + b * stride_cos, sin_ptr + b * stride_sin
        heads = tl.arange(0, HP)
        kv_heads = tl.arange(0, KVHP)
        # every load before the first store: a load after a store to memory that might alias it
        # waits for it, which made q, k and v three round trips to memory instead of one
        q, ok = _rotate(q_ptr + b * stride_q, cos, sin, heads, d, D, H)
        k, kv_ok = _rotate(k_ptr + b * stride_k, cos, sin, kv_heads, d, D, KVH)
        v = tl.load(v_ptr + b * stride_v + kv_heads[:, None] * D + d[None, :], mask=kv_ok, other=0.0)
        tl.store(out_ptr + (b * H + heads[:, None]) * D + d[None, :], q, mask=ok)
        tl.store(keys_ptr + b * sk_b + kv_heads[:, None] * sk_h + pos * sk_l + d[None, :], k, mask=kv_ok & room)
        tl.store(values_ptr + b * sv_b + kv_heads[:, None] * sv_h + pos * sv_l + d[None, :], v, mask=kv_ok & room)
    tl.debug_barrier()  # every thread has read the position before any advances it
    tl.store(length_ptr, pos + 1)


def rope_store(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               keys: torch.Tensor, values: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """q [B, 1, H*D], k and v [B, 1, KVH*D] (the projections' outputs), cos / sin [B or 1, 1, D]
    (transformers builds them from cache_position alone: one row for the whole batch); keys /
    values the layer's static cache [B, KVH, L, D], length its write position [1]. Writes the
    cache slot, advances `length`, returns q rotated as [B, H, 1, D]."""
    batch = q.shape[0]
    _, kv_heads, slots, dim = keys.shape
    heads = q.shape[-1] // dim
    if keys.shape[0] != batch or cos.shape[-1] != dim or cos.shape[0] not in (1, batch):
        raise ValueError(f"rope_store: q {tuple(q.shape)}, cos {tuple(cos.shape)} and cache "
                         f"{tuple(keys.shape)} do not match")
    if keys.stride(-1) != 1 or values.stride(-1) != 1 or dim & (dim - 1):
        raise ValueError("rope_store needs contiguous head dimensions of a power-of-two size")
    q2, k2, v2 = (t.reshape(batch, -1) for t in (q, k, v))
    cos2, sin2 = (t.reshape(t.shape[0], dim) for t in (cos, sin))
    q2, k2, v2, cos2, sin2 = (t if t.stride(-1) == 1 else t.contiguous() for t in (q2, k2, v2, cos2, sin2))
    per_row = [t.stride(0) if t.shape[0] == batch else 0 for t in (cos2, sin2)]  # one row: all rows read it
    out = torch.empty(batch, heads, 1, dim, dtype=q.dtype, device=q.device)
    pdl = min(mode_for(q.device, "rope"), LAUNCH)  # nothing constant to prefetch
    # eager's roundings: two rounded products, then their rounded sum (no fused multiply-add)
    _rope_store[(1,)](q2, k2, v2, cos2, sin2, keys, values, length, out, batch, slots, q2.stride(0), k2.stride(0),
                      v2.stride(0), *per_row, keys.stride(0), keys.stride(1), keys.stride(2),
                      values.stride(0), values.stride(1), values.stride(2), H=heads, KVH=kv_heads, D=dim,
                      HP=triton.next_power_of_2(heads), KVHP=triton.next_power_of_2(kv_heads), PDL=pdl, num_warps=4,
                      **unfused_products(), **launch_options(pdl))
    return out


@torch.library.custom_op("quantbench::rope_store", mutates_args=("keys", "values", "length"))
def rope_store_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  keys: torch.Tensor, values: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    return rope_store(q, k, v, cos, sin, keys, values, length)


@rope_store_op.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
      keys: torch.Tensor, values: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    dim = keys.shape[-1]
    return q.new_empty(keys.shape[0], q.shape[-1] // dim, 1, dim)
