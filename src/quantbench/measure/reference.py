"""The reference's log-probs, kept in constant space per scored token, and KL against them.

Reference and quantized models run in different processes, so what KL needs of the reference
is written to a file (a memory-mapped .npy of one record per scored token). Two modes:

- exact: the full fp16 log-softmax row (vocabulary x 2 bytes per token, like llama.cpp's
  --kl-divergence-base); for small vocabularies and to check the sampled mode against.
- sampled (default): the reference's top-k ids and log-probs exactly, the log of the mass left
  in the tail, and m tail ids chosen by priority sampling with their log-probs and the
  threshold tau. KL = head (exact over the top-k) + r*log(r/r_q) (tail mass)
  + r * E_tail[(rho-1) - log rho], rho = q~/p~ of the renormalised tails. The last term is a
  weighted mean over the m ids (weight max(p, tau), self-normalised): never negative per id,
  with a small variance where q is close to p (the E[rho] = 1 control variate). Tail ids above
  tau are kept surely, so the samples go where the tail is uncertain. m fills 1024 bytes per
  token: ids are uint16 up to 65,536 ids (k = 16, m = 229: SmolLM2, Llama 2, Mistral) and int32
  above (k = 16, m = 147: 1022 bytes). Top-1 agreement stays exact: the reference's argmax is
  the first top-k id. What stays is each token's sampling noise, reported as its variance: the
  mean and median KL move by < 1 % from the exact mode's, the 99th percentile of per-token KL
  by +0.2 +- 0.7 % (up to 2.3 % over 20 seeds; docs/quality.md).

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
BUDGET = 1024  # bytes per scored token that the sampled mode fills with tail samples
_HEADER = 12  # target_lp, log_tail, log_tau (fp32 each)


@dataclass(frozen=True)
class KLMode:
    exact: bool = False
    k: int = 16  # top-k kept exactly (ids above the sampling threshold are kept surely anyway)
    m: int = 0  # tail samples per token; 0: as many as fit in BUDGET bytes at the vocabulary
    seed: int = 0

    def __str__(self) -> str:
        if self.exact:
            return "exact"
        return f"sampled:{self.k}:{self.m}" if self.m else "sampled"

    def samples(self, vocab: int) -> int:
        if self.m:
            return self.m
        id_bytes = _id_dtype(vocab).itemsize
        return max(1, (BUDGET - _HEADER - self.k * (id_bytes + 4)) // (id_bytes + 2))


def parse_kl(text: str) -> KLMode:
    """'exact', 'sampled' or 'sampled:K:M'."""
    name, *numbers = str(text).strip().split(":")
    if name == "exact" and not numbers:
        return KLMode(exact=True)
    if name == "sampled" and not numbers:
        return KLMode()
    if name == "sampled" and len(numbers) == 2:
        try:
            k, m = (int(n) for n in numbers)
        except ValueError:
            k = m = 0
        if k >= 1 and m >= 1:
            return KLMode(k=k, m=m)
    raise QuantbenchError(f"bad --kl '{text}'; expected exact, sampled or sampled:K:M (e.g. sampled:16:229)")


def _id_dtype(vocab: int) -> np.dtype:
    return np.dtype("<u2") if vocab <= 1 << 16 else np.dtype("<i4")


def record_dtype(mode: KLMode, vocab: int) -> np.dtype:
    if mode.exact:
        return np.dtype([("target_lp", "<f4"), ("lp", "<f2", (vocab,))])
    ids, m = _id_dtype(vocab), mode.samples(vocab)
    return np.dtype([
        ("target_lp", "<f4"), ("log_tail", "<f4"), ("log_tau", "<f4"),
        ("top_ids", ids, (mode.k,)), ("top_lp", "<f4", (mode.k,)),
        ("tail_ids", ids, (m,)), ("tail_lp", "<f2", (m,)),
    ])


def create(path: Path, n_scored: int, vocab: int, mode: KLMode) -> np.memmap:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"rows": n_scored, "vocab": vocab, "mode": asdict(mode) | ({} if mode.exact else {"m": mode.samples(vocab)}),
            "bytes_per_token": record_dtype(mode, vocab).itemsize}
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
    vocab = lp.shape[-1]
    out = np.empty(len(lp), dtype=record_dtype(mode, vocab))
    out["target_lp"] = target_lp.cpu().numpy()
    if mode.exact:
        out["lp"] = lp.half().cpu().numpy()
        return out
    top_lp, top_ids = lp.topk(mode.k, dim=-1)
    mass = _tail_probs(lp, top_ids).sum(-1)  # a sum of small positives: no cancellation, unlike 1 - sum(top-k)
    # Priority sampling (Duffield, Lund and Thorup): key p / u with u uniform in (0, 1], keep the
    # m largest keys; with tau the (m+1)-th, max(p, tau) is an unbiased weight for each kept id.
    # Ids above tau are kept surely, so the draws go to the part of the tail that needs them.
    m = mode.samples(vocab)
    keys = torch.rand(lp.shape, generator=generator, device=lp.device, dtype=lp.dtype)
    keys = keys.neg_().log1p_().neg_().add_(lp).scatter_(1, top_ids, -torch.inf)
    if vocab < m + 1:  # a tail shorter than m: every id is kept, the rest of the record is padding
        keys = torch.nn.functional.pad(keys, (0, m + 1 - vocab), value=-torch.inf)
    kept, tail_ids = keys.topk(m + 1, dim=-1)
    del keys
    valid = kept[:, :m] > -torch.inf
    tail_ids = torch.where(valid, tail_ids[:, :m], 0)
    out["log_tail"] = mass.log().cpu().numpy()
    out["log_tau"] = kept[:, m].cpu().numpy()
    out["top_ids"] = top_ids.cpu().numpy()
    out["top_lp"] = top_lp.cpu().numpy()
    out["tail_ids"] = tail_ids.cpu().numpy()
    out["tail_lp"] = torch.where(valid, lp.gather(1, tail_ids), -torch.inf).half().cpu().numpy()
    return out


def _tail_probs(lp: torch.Tensor, top_ids: torch.Tensor) -> torch.Tensor:
    return lp.exp().scatter_(1, top_ids, 0.0)


def reference_top1(records: np.ndarray) -> np.ndarray:
    if "lp" in records.dtype.names:
        return np.asarray(records["lp"]).argmax(-1)
    return np.asarray(records["top_ids"][:, 0])


def kl(records: np.ndarray, q_lp: torch.Tensor, estimator: str = "k3") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token KL(reference || q) and the Monte-Carlo variance of each estimate (0 when exact).

    `estimator` is "k3" (the default above), "plain" (the same weighted mean of log p - log q)
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
    x = tail_lp - q_lp.gather(1, tail_ids) - (log_r - log_rq).unsqueeze(1)  # log p~ - log q~ at each id
    # priority-sampling weights as shares of the tail (they sum to ~1); padding (log p = -inf)
    # and rows without a tail weigh 0 (their NaNs stay in the branch not taken)
    log_share = tail_lp - log_r.unsqueeze(1)
    log_tau = (on("log_tau") - log_r).unsqueeze(1)
    log_w = torch.maximum(log_share, log_tau)
    valid = (r > 0).unsqueeze(1) & (tail_lp > -torch.inf)
    w = torch.where(valid, log_w.exp(), 0.0)
    # w * ((rho - 1) - log rho); where rho is huge (p~ << q~) w * rho is taken in log space, as
    # w * expm1(-x) can overflow; elsewhere expm1 keeps the small differences of close models
    k3 = torch.where(x > -30, w * (torch.expm1(-x) + x), torch.exp(log_w - x) - w + w * x)
    terms = w * x if estimator == "plain" else k3
    terms = torch.where(valid, terms, 0.0)
    # self-normalised: the weights' own sum estimates the tail's known share (1); dividing by
    # it removes the part of the error that comes from how many small ids were drawn
    total = w.sum(-1)
    total = torch.where(total > 0, total, 1.0)  # no tail (r = 0): every term is 0 already
    tail = terms.sum(-1) / total
    # each weight's unbiased variance is tau (tau - p) below tau, 0 above (Duffield, Lund and
    # Thorup); through the ratio's linearisation
    below = (1 - (log_share - log_tau).exp()).clamp_min(0.0)
    spread = torch.where(valid, (terms - w * tail.unsqueeze(1)).square() * below, 0.0)
    return head + bucket + r * tail, r.square() * spread.sum(-1) / total.square()
