"""The reference's log-probs, kept in constant space per scored token, and KL against them.

Reference and quantized models run in different processes, so what KL needs of the reference
is written to a file (a memory-mapped .npy of one record per scored token). Two modes:

- exact: the full fp16 log-softmax row (vocabulary x 2 bytes per token, like llama.cpp's
  --kl-divergence-base); for small vocabularies and to check the sampled mode against.
- sampled (default): the reference's top-k ids and log-probs exactly, the log of the mass left
  in the tail, and m ids drawn from the reference's tail distribution with their log-probs.
  KL = head (exact over the top-k) + r*log(r/r_q) (tail mass) + r * E_tail[(rho-1) - log rho],
  rho = q~/p~ of the renormalised tails. The last term is estimated from the m samples; it is
  unbiased, never negative per sample, and its variance is small where q is close to p (the
  E[rho] = 1 control variate). k = m = 64 is 904 bytes per token whatever the vocabulary.
  Top-1 agreement stays exact: the reference's argmax is the first top-k id.

Measured against the exact mode in benchmarks/kl_methods.py (docs/quality.md has the table).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from quantbench.errors import QuantbenchError

KL_MODES = ("sampled", "exact")


@dataclass(frozen=True)
class KLMode:
    exact: bool = False
    k: int = 64  # top-k kept exactly
    m: int = 64  # tail samples per token
    seed: int = 0

    def __str__(self) -> str:
        return "exact" if self.exact else f"sampled:{self.k}:{self.m}"


def parse_kl(text: str) -> KLMode:
    """'exact', 'sampled' or 'sampled:K:M'."""
    name, *numbers = str(text).strip().split(":")
    if name == "exact" and not numbers:
        return KLMode(exact=True)
    if name == "sampled" and len(numbers) in (0, 2):
        try:
            k, m = (int(n) for n in numbers) if numbers else (KLMode.k, KLMode.m)
        except ValueError:
            k = m = 0
        if k >= 1 and m >= 1:
            return KLMode(k=k, m=m)
    raise QuantbenchError(f"bad --kl '{text}'; expected exact, sampled or sampled:K:M (e.g. sampled:64:64)")


def record_dtype(mode: KLMode, vocab: int) -> np.dtype:
    if mode.exact:
        return np.dtype([("target_lp", "<f4"), ("lp", "<f2", (vocab,))])
    return np.dtype([
        ("target_lp", "<f4"), ("log_tail", "<f4"),
        ("top_ids", "<i4", (mode.k,)), ("top_lp", "<f4", (mode.k,)),
        ("tail_ids", "<i4", (mode.m,)), ("tail_lp", "<f2", (mode.m,)),
    ])


def create(path: Path, n_scored: int, vocab: int, mode: KLMode) -> np.memmap:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"rows": n_scored, "vocab": vocab, "mode": asdict(mode)}
    path.with_suffix(".json").write_text(json.dumps(info))
    return np.lib.format.open_memmap(path, mode="w+", dtype=record_dtype(mode, vocab), shape=(n_scored,))


def open_reference(path: Path, n_scored: int, vocab: int, mode: KLMode) -> np.ndarray:
    if not path.exists():
        raise QuantbenchError(f"reference log-probs '{path}' are missing; run the reference precision first")
    try:
        ref = np.load(path, mmap_mode="r")
    except ValueError:
        ref = None
    if ref is None or ref.shape != (n_scored,) or ref.dtype != record_dtype(mode, vocab):
        raise QuantbenchError(f"reference log-probs '{path}' were made with other settings; rerun with --force")
    return ref


def encode(lp: torch.Tensor, target_lp: torch.Tensor, mode: KLMode, generator: torch.Generator | None
           ) -> np.ndarray:
    """One record per row of `lp` (fp32 log-softmax, on its device); only small arrays are copied."""
    out = np.empty(len(lp), dtype=record_dtype(mode, lp.shape[-1]))
    out["target_lp"] = target_lp.cpu().numpy()
    if mode.exact:
        out["lp"] = lp.half().cpu().numpy()
        return out
    top_lp, top_ids = lp.topk(mode.k, dim=-1)
    probs = _tail_probs(lp, top_ids)
    mass = probs.sum(-1)  # a sum of small positives: no cancellation, unlike 1 - sum(top-k)
    log_tail = mass.log()
    probs[mass <= 0, 0] = 1.0  # all mass in the top-k (r underflowed): any draw, weighted by r = 0
    tail_ids = torch.multinomial(probs, mode.m, replacement=True, generator=generator)
    out["log_tail"] = log_tail.cpu().numpy()
    out["top_ids"] = top_ids.int().cpu().numpy()
    out["top_lp"] = top_lp.cpu().numpy()
    out["tail_ids"] = tail_ids.int().cpu().numpy()
    out["tail_lp"] = lp.gather(1, tail_ids).half().cpu().numpy()
    return out


def _tail_probs(lp: torch.Tensor, top_ids: torch.Tensor) -> torch.Tensor:
    return lp.exp().scatter_(1, top_ids, 0.0)


def reference_top1(records: np.ndarray) -> np.ndarray:
    if "lp" in records.dtype.names:
        return np.asarray(records["lp"]).argmax(-1)
    return np.asarray(records["top_ids"][:, 0])


def kl(records: np.ndarray, q_lp: torch.Tensor, estimator: str = "k3") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token KL(reference || q) and the Monte-Carlo variance of each estimate (0 when exact).

    `estimator` is "k3" (the default above), "plain" (r * mean(log p - log q) over the samples)
    or "bucket" (top-k exactly plus one tail bucket: a lower bound); the last two are only for
    the comparison in benchmarks/kl_methods.py.
    """
    device = q_lp.device
    on = lambda name, dtype=torch.float32: torch.from_numpy(np.ascontiguousarray(records[name])).to(  # noqa: E731
        device, dtype)
    if "lp" in records.dtype.names:
        p = on("lp")
        return (p.exp() * (p - q_lp)).sum(-1), torch.zeros(len(p), device=device)
    top_ids, top_lp = on("top_ids", torch.int64), on("top_lp")
    head = (top_lp.exp() * (top_lp - q_lp.gather(1, top_ids))).sum(-1)
    log_r = on("log_tail")
    log_rq = _tail_probs(q_lp, top_ids).sum(-1).log()
    r = log_r.exp()
    bucket = torch.where(r > 0, r * (log_r - log_rq), 0.0)
    if estimator == "bucket":
        return head + bucket, torch.zeros_like(head)
    tail_ids, tail_lp = on("tail_ids", torch.int64), on("tail_lp")
    log_ratio = tail_lp - q_lp.gather(1, tail_ids)  # log p - log q at each sample
    if estimator == "plain":
        terms, base = log_ratio, head
    else:
        x = log_ratio - (log_r - log_rq).unsqueeze(1)  # log p~ - log q~ of the renormalised tails
        terms, base = torch.expm1(-x) + x, head + bucket
    terms = torch.where(r.unsqueeze(1) > 0, terms, 0.0)
    m = terms.shape[1]
    tail = r * terms.mean(-1)
    mc_var = r.square() * terms.var(-1) / m if m > 1 else torch.zeros_like(tail)
    return base + tail, mc_var
