"""Standard errors of the quality figures, from per-token values (llama-perplexity's ±).

Tokens are treated as independent draws, as llama.cpp does; neighbouring tokens are correlated,
so the true error is somewhat larger. Perplexity's error comes from the mean NLL's by the delta
method; the ratio to the reference is paired per token, which cancels the text's own
difficulty and leaves a much smaller error than the two perplexities' errors combined.
"""

from __future__ import annotations

import math

import numpy as np


def mean_se(values: np.ndarray) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    se = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return float(values.mean()), se


def perplexity(nll: np.ndarray) -> tuple[float, float]:
    """exp(mean NLL) and its standard error."""
    mean, se = mean_se(nll)
    ppl = math.exp(mean)
    return ppl, ppl * se


def log_ratio(nll: np.ndarray, ref_nll: np.ndarray) -> tuple[float, float]:
    """ln(PPL / PPL_ref) = mean of the per-token NLL difference, and its paired standard error."""
    return mean_se(np.asarray(nll, dtype=np.float64) - np.asarray(ref_nll, dtype=np.float64))


def proportion(hits: np.ndarray) -> tuple[float, float]:
    share = float(np.mean(hits))
    return share, math.sqrt(share * (1 - share) / len(hits))


def quantile(values: np.ndarray, q: float) -> tuple[float, float]:
    """The q-quantile and its standard error, free of any assumed distribution: the rank of a
    sample quantile varies by sqrt(n q (1 - q)), so the error is half the distance between the
    quantiles that many ranks below and above it."""
    values = np.asarray(values, dtype=np.float64)
    spread = math.sqrt(q * (1 - q) / len(values))  # in probability: the rank's sd over n
    low, value, high = np.quantile(values, [max(q - spread, 0.0), q, min(q + spread, 1.0)])
    return float(value), float(high - low) / 2


def kl_mean(kl: np.ndarray, mc_var: np.ndarray) -> tuple[float, float, float]:
    """Mean KL, its standard error over tokens, and the Monte-Carlo part alone.

    The tokens' spread already holds the sampling noise of each estimate; the Monte-Carlo part
    is added once more, so the ± also covers the distance to the exact mean over this text.
    """
    mean, se = mean_se(kl)
    mc = math.sqrt(float(np.sum(mc_var))) / len(kl)
    return mean, math.sqrt(se**2 + mc**2), mc


def bootstrap_se(values: np.ndarray, statistic=np.mean, rounds: int = 1000, seed: int = 0) -> float:
    """The standard error of `statistic` by resampling tokens: what the closed forms are checked against."""
    rng = np.random.default_rng(seed)
    values = np.asarray(values)
    picks = rng.integers(0, len(values), size=(rounds, len(values)))
    return float(np.std([statistic(values[p]) for p in picks], ddof=1))
