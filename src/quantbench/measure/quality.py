"""Perplexity over sliding windows, and KL divergence / top-1 agreement against a reference.

Two window protocols, both scoring every token of every document exactly once:
- sliding (ours, the default): the first window scores all it sees; each later one scores the
  next `stride` tokens with up to `context` tokens of history.
- lm-eval: lm-evaluation-harness's loglikelihood_rolling: the BOS (else EOS) token is
  prepended, windows are disjoint blocks of `context` predictions (the model's max_length);
  word- and byte-perplexity are reported as its wikitext task does.
Reference and quantized models run in different processes: reference.py keeps what KL needs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantbench.errors import QuantbenchError
from quantbench.measure import reference as refs
from quantbench.measure import uncertainty
from quantbench.measure.scoring import Window, score_windows, vocab_size
from quantbench.measure.texts import HELDOUT, load_documents, load_text

__all__ = ["HELDOUT", "PROTOCOLS", "Scores", "load_documents", "load_text", "lm_eval_windows", "measure",
           "quality_metrics", "reference_perplexity", "score", "windows"]
PROTOCOLS = ("sliding", "lm-eval")


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first) per window; every position from 1 on is a target exactly once.

    The model reads ids[begin:end-1] (at most context - 1 tokens) and predicts first..end-1.
    The first window scores all it sees; each later one scores the next `stride` positions
    (at most context - 1, so every target keeps some context) and reaches back a full context.
    """
    if context < 2 or stride < 1 or stride > context:
        raise QuantbenchError(f"need 2 <= context and 1 <= stride <= context (got {context}, {stride})")
    end = min(context, n_tokens)
    out = [(0, end, 1)] if end > 1 else []
    step = min(stride, context - 1)
    while end < n_tokens:
        first, end = end, min(end + step, n_tokens)
        out.append((max(0, end - context), end, first))
    return out


def lm_eval_windows(n_tokens: int, max_length: int) -> list[tuple[int, int, int]]:
    """lm-eval's rolling windows (context_len=1) over prefix + n_tokens ids, in our (begin, end, first).

    Index 0 is the prefix token. The first window reads [prefix] + the first max_length - 1
    tokens and predicts max_length tokens; each later one predicts the next max_length tokens
    from the max_length ids just before them.
    """
    if max_length < 1:
        raise QuantbenchError(f"need a context of at least 1 token (got {max_length})")
    if n_tokens < 1:
        return []
    predicted = min(max_length, n_tokens)
    out = [(0, predicted + 1, 1)]
    while predicted < n_tokens:
        window_end = predicted + min(n_tokens - predicted, max_length)
        out.append((window_end - max_length, window_end + 1, predicted + 1))
        predicted = window_end
    return out


@dataclass
class Scores:
    target_lp: np.ndarray  # per scored token, natural log
    kl: np.ndarray | None = None
    kl_mc_var: np.ndarray | None = None
    top1_match: np.ndarray | None = None
    ref_target_lp: np.ndarray | None = None

    @property
    def n_tokens(self) -> int:
        return len(self.target_lp)

    @property
    def nll_sum(self) -> float:
        return float(-self.target_lp.sum())

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.nll_sum / self.n_tokens))


def _as_docs(ids: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    return [ids] if isinstance(ids, torch.Tensor) else list(ids)


def _spans(docs: list[torch.Tensor], context: int, stride: int, protocol: str) -> list[Window]:
    if protocol == "lm-eval":
        return [(d, *w) for d, doc in enumerate(docs) for w in lm_eval_windows(len(doc) - 1, context)]
    return [(d, *w) for d, doc in enumerate(docs) for w in windows(len(doc), context, stride)]


def score(
    model: torch.nn.Module,
    ids: torch.Tensor | list[torch.Tensor],
    context: int,
    stride: int,
    reference: Path | None = None,
    save_reference: Path | None = None,
    kl: str = "sampled",
    batch_size: int = 1,
    protocol: str = "sliding",
) -> Scores:
    """Token-weighted scores of one or more documents; KL and top-1 vs `reference` when given.

    Under the lm-eval protocol each document's ids must already start with the prefix token.
    """
    if protocol not in PROTOCOLS:
        raise QuantbenchError(f"unknown --ppl-protocol '{protocol}'; choose from {', '.join(PROTOCOLS)}")
    mode = refs.parse_kl(kl)
    docs = _as_docs(ids)
    spans = _spans(docs, context, stride, protocol)
    if not spans:
        raise QuantbenchError("the text is too short to score (fewer than 2 tokens)")
    n_scored = sum(end - first for _, _, end, first in spans)
    vocab = vocab_size(model)
    ref = refs.open_reference(Path(reference), n_scored, vocab, mode) if reference else None
    out = refs.create(Path(save_reference), n_scored, vocab, mode) if save_reference else None
    arrays = score_windows(model, docs, spans, batch_size, mode, ref, out)
    join = lambda parts: np.concatenate(parts) if parts else None  # noqa: E731
    return Scores(target_lp=join(arrays.target_lp), kl=join(arrays.kl), kl_mc_var=join(arrays.kl_mc_var),
                  top1_match=join(arrays.top1_match), ref_target_lp=join(arrays.ref_target_lp))


def reference_perplexity(path: Path) -> float:
    """The reference's perplexity recomputed from its saved file (no model needed)."""
    records = np.load(path, mmap_mode="r")
    return float(np.exp(-records["target_lp"].astype(np.float64).mean()))


def quality_metrics(scores: Scores, reference_ppl: float | None = None) -> dict[str, float | int | None]:
    """Every figure with its standard error (`<name>_se`); see uncertainty.py."""
    nll = -scores.target_lp
    ppl, ppl_se = uncertainty.perplexity(nll)
    metrics: dict[str, float | int | None] = {
        "perplexity": ppl, "perplexity_se": ppl_se, "scored_tokens": scores.n_tokens,
    }
    if scores.kl is not None:
        kl_mean, kl_se, kl_mc = uncertainty.kl_mean(scores.kl, scores.kl_mc_var)
        kl_p99, kl_p99_se = uncertainty.quantile(scores.kl, 0.99)
        top1, top1_se = uncertainty.proportion(scores.top1_match)
        metrics |= {
            "kl_mean": kl_mean, "kl_mean_se": kl_se, "kl_mean_mc_se": kl_mc,
            "kl_p99": kl_p99, "kl_p99_se": kl_p99_se,
            "kl_median": float(np.median(scores.kl)),
            "top1_agreement": top1, "top1_agreement_se": top1_se,
        }
    if scores.ref_target_lp is not None:
        ln_ratio, ln_se = uncertainty.log_ratio(nll, -scores.ref_target_lp)
        metrics |= {"ln_ppl_ratio": ln_ratio, "ln_ppl_ratio_se": ln_se,
                    "ppl_ratio": math.exp(ln_ratio), "ppl_ratio_se": math.exp(ln_ratio) * ln_se}
    elif reference_ppl:
        metrics["ppl_ratio"] = scores.perplexity / reference_ppl
    return metrics


def _tokenize(tokenizer: Any, docs: list[str], protocol: str, max_tokens: int | None
              ) -> tuple[list[torch.Tensor], list[str]]:
    """Token ids per document, cut at `max_tokens` in all, and the text each one covers."""
    if protocol == "lm-eval":  # lm-eval encodes without special tokens and prepends its own prefix
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        encoded = [[prefix] + tokenizer(d, add_special_tokens=False)["input_ids"] for d in docs]
    else:
        encoded = [tokenizer(d)["input_ids"] for d in docs]
    out, texts, left = [], [], max_tokens
    for text, ids in zip(docs, encoded, strict=True):
        if left is not None and len(ids) > left:
            ids = ids[:left]
            text = tokenizer.decode(ids[1:] if protocol == "lm-eval" else ids, skip_special_tokens=True)
        if left is not None:
            left -= len(ids)
        if len(ids) > 1:
            out.append(torch.tensor(ids))
            texts.append(text)
        if left is not None and left <= 0:
            break
    return out, texts


def measure(model: torch.nn.Module, tokenizer: Any, work: Any, reference: Path | None = None,
            save_reference: Path | None = None) -> dict[str, Any]:
    """The quality metrics of one loaded model under a Workload's settings."""
    texts = load_documents(work.text_file, work.dataset)
    protocol = getattr(work, "ppl_protocol", "sliding")
    docs, texts = _tokenize(tokenizer, texts, protocol, work.ppl_max_tokens)
    max_positions = getattr(model.config, "max_position_embeddings", None) or work.ppl_context
    context = min(work.ppl_context, max_positions)
    stride = min(work.ppl_stride, context)
    scores = score(model, docs, context, stride, reference=reference, save_reference=save_reference,
                   kl=getattr(work, "kl", "sampled"), batch_size=getattr(work, "ppl_batch_size", 1),
                   protocol=protocol)
    metrics = quality_metrics(scores, scores.perplexity if save_reference else None)
    if protocol == "lm-eval":
        metrics |= _lm_eval_metrics(scores, texts)
    return metrics


def _lm_eval_metrics(scores: Scores, texts: list[str]) -> dict[str, float]:
    """lm-eval's wikitext aggregates: log-likelihood over words and bytes of the scored text."""
    loglikelihood = float(scores.target_lp.sum())
    words = sum(len(re.split(r"\s+", t)) for t in texts)
    size = sum(len(t.encode("utf-8")) for t in texts)
    return {
        "loglikelihood": loglikelihood,
        "word_perplexity": math.exp(-loglikelihood / words),
        "byte_perplexity": math.exp(-loglikelihood / size),
        "bits_per_byte": -loglikelihood / size / math.log(2),
    }
