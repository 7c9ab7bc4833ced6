"""Decode attention that reads transformers' static KV cache in place: one query token per row.

transformers' SDPA path for a decode step over a StaticCache goes through torch's SDPA with a
boolean [batch, 1, 1, cache length] mask (positions not yet written are masked); this kernel
computes the same softmax(q k^T * scale) v in one launch per layer: the grouped-query head's keys
and values read straight from the cache, only between the first and last attended positions of
each program's part (unwritten slots of a long static cache are never read), fp32 scores and an
online softmax (a running max and sum), the output rounded once to the activation dtype. A
step asks for its keys and values together, so it waits for memory once. SDPA's
fused kernels round the probabilities to fp16 before multiplying by v; this one keeps them in
fp32, so results differ from SDPA's by rounding.

With config.attention_parts "parts" (the default), the cache positions are split into parts
(flash-decoding): one program per (row, query head, part), so that a step has programs enough
to keep the GPU busy and none walks a long cache alone. Each program leaves its part's max, sum
and weighted values in a scratch buffer and counts itself in at a per-(row, head) counter; the
last one in combines the parts in part order (the same order whichever program comes last:
deterministic) and resets the counter for the next step, so a CUDA graph replays it as it is. A
cache too short to split runs one part, and so does a short cache (under SHORT_CACHE positions)
whose (row, head) programs alone fill the SMs (parts_for).

It is an attention implementation of transformers' registry ("quantbench_sdpa"): install()
points a model's config at it, and it hands every call it does not serve (prefill, no or
non-boolean mask, plan disabled) to transformers' own sdpa_attention_forward unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from quantbench.kernels.config import SMS, attention_parts, pipeline_stages
from quantbench.kernels.overlap import LAUNCH, launch_options, mode_for, wait_for_inputs

NAME = "quantbench_sdpa"
HEAD_DIMS = (32, 64, 128, 256)  # the head sizes the kernel serves (others go to SDPA)


@triton.jit
def _tile(ptr, pos, span, stride, d):
    """A step's key or value tile [positions, D] of one head's cache (0 outside `span`)."""
    return tl.load(ptr + pos[:, None] * stride + d[None, :], mask=span[:, None], other=0.0)


@triton.jit
def _keys_values(k_ptr, v_ptr, pos, span, sk_l, sv_l, d):
    """A step's key and value tiles, asked for together."""
    return _tile(k_ptr, pos, span, sk_l, d), _tile(v_ptr, pos, span, sv_l, d)


@triton.jit
def _softmax_step(s, v, ok, m_i, l_i, acc):
    """Online softmax over one step's scores `s` (-inf where not `ok`) and values: the running
    max, sum and weighted values."""
    m_new = tl.maximum(m_i, tl.max(s, axis=0))
    alive = m_new > float("-inf")  # nothing seen yet: keep the zeros
    alpha = tl.where(alive, tl.exp(m_i - m_new), 1.0)
    p = tl.where(ok, tl.exp(s - m_new), 0.0)
    v = tl.where(ok[:, None], v.to(tl.float32), 0.0)  # a masked slot inside the span adds nothing, even inf
    return m_new, l_i * alpha + tl.sum(p, axis=0), acc * alpha + tl.sum(p[:, None] * v, axis=0)


@triton.jit
def _scores(q, k, ok):
    """A step's scores q . k per position, -inf where not `ok`."""
    return tl.where(ok, tl.sum(k.to(tl.float32) * q[None, :], axis=1), float("-inf"))


@triton.jit
def _attend(q, k, v, ok, m_i, l_i, acc):
    """One step on its key and value tiles: scores, then _softmax_step."""
    return _softmax_step(_scores(q, k, ok), v, ok, m_i, l_i, acc)


@triton.jit
def _decode_attention(q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, part_ptr, max_ptr, sum_ptr, count_ptr, L, CHUNK,
                      PARTS, scale, sq_b, sq_h, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, sm_b, so_b, so_h,
                      GROUP: tl.constexpr, D: tl.constexpr, BLOCK_L: tl.constexpr, SCAN: tl.constexpr,
                      PARTS_P2: tl.constexpr = 1, PDL: tl.constexpr = 0, STAGES: tl.constexpr = None):
    wait_for_inputs(PDL)
    b = tl.program_id(0)
    h = tl.program_id(1)
    part = tl.program_id(2)
    kv = h // GROUP
    d = tl.arange(0, D)
    q = tl.load(q_ptr + b * sq_b + h * sq_h + d).to(tl.float32) * scale
    # The span of attended positions in this part first (one pass over its mask bytes), so the
    # loop below reads no unwritten cache slots and its loads do not wait on the mask: they
    # overlap across steps. The part's first step is asked for before that pass, which it does
    # not need: where the span starts at the part's start (a decode's cache, written from position
    # 0 on), it is the loop's first step, and the scan and its loads share one wait for memory.
    # (Heads of 256 keep the loop as it is: more tiles in registers spill there.)
    start = part * CHUNK
    end = tl.minimum(start + CHUNK, L)
    EARLY: tl.constexpr = D <= 128
    if EARLY:
        first_pos = start + tl.arange(0, BLOCK_L)
        first_k, first_v = _keys_values(k_ptr + b * sk_b + kv * sk_h, v_ptr + b * sv_b + kv * sv_h, first_pos,
                                        first_pos < end, sk_l, sv_l, d)
    first = tl.full([SCAN], L, tl.int32)
    last = tl.full([SCAN], -1, tl.int32)
    for l0 in range(start, end, SCAN):
        pos = l0 + tl.arange(0, SCAN)
        ok = tl.load(mask_ptr + b * sm_b + pos, mask=pos < end, other=0) != 0
        first = tl.minimum(first, tl.where(ok, pos, L))
        last = tl.maximum(last, tl.where(ok, pos, -1))
    lo = tl.min(first, axis=0)
    hi = tl.max(last, axis=0) + 1
    m_i = tl.max(tl.full([BLOCK_L], float("-inf"), tl.float32), axis=0)
    l_i = tl.sum(tl.zeros([BLOCK_L], tl.float32), axis=0)
    acc = tl.zeros([D], dtype=tl.float32)
    loop_lo = lo
    if EARLY:  # noqa: SIM102  (a compile-time branch in Triton, around one at run time)
        if (lo == start) & (lo < hi):
            span = first_pos < hi  # the slots in [hi, end) it read meet a False `ok` below
            ok = (tl.load(mask_ptr + b * sm_b + first_pos, mask=span, other=0) != 0) & span
            m_i, l_i, acc = _attend(q, first_k, first_v, ok, m_i, l_i, acc)
            loop_lo = lo + BLOCK_L
    for l0 in tl.range(loop_lo, hi, BLOCK_L, num_stages=STAGES):  # config.pipeline_stages
        pos = l0 + tl.arange(0, BLOCK_L)
        span = pos < hi
        ok = (tl.load(mask_ptr + b * sm_b + pos, mask=span, other=0) != 0) & span
        if EARLY:  # the values asked for with the keys: after the scores' reductions (block
            # barriers) they would cost each step a second round trip to memory
            k, v = _keys_values(k_ptr + b * sk_b + kv * sk_h, v_ptr + b * sv_b + kv * sv_h, pos, span, sk_l,
                                sv_l, d)
            m_i, l_i, acc = _attend(q, k, v, ok, m_i, l_i, acc)
        else:
            k = _tile(k_ptr + b * sk_b + kv * sk_h, pos, span, sk_l, d)
            s = _scores(q, k, ok)
            v = _tile(v_ptr + b * sv_b + kv * sv_h, pos, span, sv_l, d)  # after the scores' reductions
            m_i, l_i, acc = _softmax_step(s, v, ok, m_i, l_i, acc)
    if PARTS_P2 == 1:
        tl.store(out_ptr + b * so_b + h * so_h + d, (acc / l_i).to(out_ptr.dtype.element_ty))
    else:
        head = b * tl.num_programs(1) + h
        at = head * PARTS + part
        tl.store(max_ptr + at, m_i)
        tl.store(sum_ptr + at, l_i)
        tl.store(part_ptr + at * D + d, acc)
        tl.debug_barrier()  # every thread's stores before the release below
        arrived = tl.atomic_add(count_ptr + head, 1, sem="acq_rel", scope="gpu")
        if arrived == PARTS - 1:  # the last part in: all the others' stores are visible
            j = tl.arange(0, PARTS_P2)
            have = j < PARTS
            maxes = tl.load(max_ptr + head * PARTS + j, mask=have, other=float("-inf"), cache_modifier=".cg")
            sums = tl.load(sum_ptr + head * PARTS + j, mask=have, other=0.0, cache_modifier=".cg")
            parts = tl.load(part_ptr + (head * PARTS + j)[:, None] * D + d[None, :], mask=have[:, None], other=0.0,
                            cache_modifier=".cg")
            top = tl.max(maxes, axis=0)
            weight = tl.where(maxes > float("-inf"), tl.exp(maxes - top), 0.0)  # a part with nothing attended: 0
            total = tl.sum(weight[:, None] * parts, axis=0)
            tl.store(out_ptr + b * so_b + h * so_h + d, (total / tl.sum(weight * sums, axis=0)).to(
                out_ptr.dtype.element_ty))
            tl.atomic_xchg(count_ptr + head, 0, sem="relaxed", scope="gpu")  # ready for the next step


_COUNTERS: dict[torch.device, torch.Tensor] = {}
COUNTER_SLOTS = 1 << 16  # (row, head) pairs a launch may split; a larger launch runs one part
SHORT_CACHE = 1024  # positions under which a launch whose (row, head) programs fill the SMs runs one part


def counters(device: torch.device) -> torch.Tensor:
    """The arrival counters of a device, zeros, allocated once and kept: a captured graph holds
    their address, and each launch leaves them at zero. One set per device: split launches on
    one device must not run at the same time on two streams (the fast engine runs one stream).
    The kernels' install allocates them, outside any graph capture or private memory pool."""
    if device not in _COUNTERS:
        _COUNTERS[device] = torch.zeros(COUNTER_SLOTS, dtype=torch.int32, device=device)
    return _COUNTERS[device]


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def parts_for(batch: int, heads: int, length: int, block: int = 64) -> tuple[int, int]:
    """(parts, positions per part) of a cache of `length`: enough programs to fill the SMs about
    twice over, each part whole steps of the kernel's loop (`block` positions); one part when
    config.attention_parts is "one", and where the (row, head) programs alone fill the SMs and
    the cache is short (under SHORT_CACHE positions: there the combine costs more than the
    parts save, H100 measurements in config.attention_parts)."""
    want = max(1, -(-2 * SMS // (batch * heads)))
    parts = max(1, min(want, length // block))
    filled = batch * heads >= SMS and length < SHORT_CACHE
    if parts == 1 or filled or batch * heads > COUNTER_SLOTS or attention_parts() != "parts":
        return 1, length
    chunk = triton.cdiv(triton.cdiv(length, parts), block) * block
    return triton.cdiv(length, chunk), chunk


def decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """query [B, H, 1, D], key/value [B, KVH, L, D] (views of the cache), mask [B, 1, 1, L] bool
    (True: attend) -> [B, 1, H, D] in query's dtype, as sdpa_attention_forward returns it."""
    batch, heads, _, dim = query.shape
    length = key.shape[2]
    out = torch.empty(batch, 1, heads, dim, dtype=query.dtype, device=query.device)
    mask2 = mask.reshape(mask.shape[0], mask.shape[-1]).expand(batch, length)
    mask2 = mask2.view(torch.uint8) if mask2.dtype == torch.bool else mask2
    if key.stride(-1) != 1 or value.stride(-1) != 1 or query.stride(-1) != 1:
        raise ValueError("decode_attention needs the last dimension contiguous")
    parts, chunk = parts_for(batch, heads, length)
    if parts > 1 and query.device not in _COUNTERS and _capturing(query.device):
        parts, chunk = 1, length  # counters made inside a capture would live in its pool: one part
    if parts > 1:
        n = batch * heads * parts
        scratch = torch.empty(n * (dim + 2), dtype=torch.float32, device=query.device)
        acc, maxes, sums = scratch[: n * dim], scratch[n * dim : n * (dim + 1)], scratch[n * (dim + 1) :]
        arrivals = counters(query.device)
    else:
        acc = maxes = sums = arrivals = out  # placeholders, never touched
    pdl = min(mode_for(query.device, "attention"), LAUNCH)  # the cache was just written: nothing to fetch
    _decode_attention[(batch, heads, parts)](
        query, key, value, mask2, out, acc, maxes, sums, arrivals, length, chunk, parts, float(scale),
        query.stride(0), query.stride(1), key.stride(0), key.stride(1), key.stride(2), value.stride(0),
        value.stride(1), value.stride(2), mask2.stride(0), out.stride(0), out.stride(2), GROUP=heads // key.shape[1],
        D=dim, BLOCK_L=64, SCAN=min(1024, triton.next_power_of_2(chunk)), PARTS_P2=triton.next_power_of_2(parts),
        PDL=pdl, STAGES=pipeline_stages("attention"), num_warps=4, **launch_options(pdl))
    return out


@torch.library.custom_op("quantbench::decode_attention", mutates_args=())
def decode_attention_op(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                        scale: float) -> torch.Tensor:
    return decode_attention(query, key, value, mask, scale)


@decode_attention_op.register_fake
def _(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
      scale: float) -> torch.Tensor:
    batch, heads, _, dim = query.shape
    return query.new_empty(batch, 1, heads, dim)


def attention_forward(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    plan = getattr(module, "quantbench_plan", None)
    serves = (plan is not None and plan.serves_attention(query) and query.shape[2] == 1 and dropout == 0.0
              and attention_mask is not None and attention_mask.dtype == torch.bool
              and attention_mask.shape[-2] == 1 and query.shape[-1] in HEAD_DIMS)
    if not serves:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return decode_attention_op(query, key, value, attention_mask, scale), None


def register() -> None:
    """Make "quantbench_sdpa" a transformers attention implementation with SDPA's masks."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
