"""Pick the precision that fits a memory budget with the best quality.

From measured Results when given (memory from the run's peak, quality from its perplexity
ratio), else from the estimate (memory computed, quality from the documented expected order).
Every losing precision gets its reason.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from quantbench.errors import QuantbenchError
from quantbench.estimate import CUDA_CONTEXT_BYTES, EstimateSettings, estimate, json_safe
from quantbench.precisions import PRECISIONS
from quantbench.results import sweep, sweep_key
from quantbench.units import gib, parse_size

# Two measured ratios closer than this many standard errors of their difference are a tie.
TIE_STANDARD_ERRORS = 2.0
PEAK_METRICS = ("peak_generate_bytes_b1", "peak_load_bytes", "weights_footprint_bytes")


@dataclass
class Candidate:
    precision: str
    need_bytes: int | None
    memory_metric: str  # where need_bytes came from
    ppl_ratio: float | None = None
    fits: bool = False
    ppl_ratio_se: float | None = None
    verdict: str = ""


@dataclass
class Recommendation:
    model: str
    budget_bytes: int
    max_ppl_increase: float
    source: str  # "measured" or "estimated"
    winner: str | None
    candidates: list[Candidate]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def parse_fraction(text: str | float) -> float:
    """'5%' or '0.05' -> 0.05."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise QuantbenchError(f"bad tolerance '{text}'; expected e.g. 5% or 0.05") from None
    if value < 0:
        raise QuantbenchError(f"tolerance must not be negative, got '{text}'")
    return value


def quality_tier(precision: str) -> int:
    """Expected quality, best first, from the precision's scheme; precisions in one tier are
    interchangeable for quality, so the smaller one wins. Results of a precision this version
    does not know (an older or newer table) rank after every known one."""
    known = PRECISIONS.get(precision)
    return known.quality_tier if known else max(p.quality_tier for p in PRECISIONS.values()) + 1


def _peak_metric(metrics: dict[str, Any]) -> tuple[str, int] | None:
    # batch 1 first, then the smallest batch measured, then what loading alone took
    batches = [sweep_key("peak_generate_bytes", b) for b in sweep(metrics, "peak_generate_bytes")]
    names = [*PEAK_METRICS[:1], *batches, *PEAK_METRICS[1:]]
    for name in names:
        if metrics.get(name) is not None:
            return name, int(metrics[name])
    return None


def measured_candidates(results: list[Any], model: str, context_bytes: int,
                        notes: list[str]) -> list[Candidate]:
    from quantbench.results import latest_by_key

    mine = [r for r in latest_by_key(results)
            if r.spec.model == model and r.spec.kind == "benchmark" and r.ok]
    out: dict[str, Candidate] = {}
    for result in mine:
        peak = _peak_metric(result.metrics)
        if peak is None or result.spec.precision in out:
            continue
        ratio = None if result.random_weights else result.metrics.get("ppl_ratio")
        error = None if result.random_weights else result.metrics.get("ppl_ratio_se")
        out[result.spec.precision] = Candidate(result.spec.precision, peak[1] + context_bytes,
                                               peak[0], ratio, ppl_ratio_se=error)
    if any(r.random_weights for r in mine):
        notes.append("these Results are for random weights: their perplexity is ignored")
    return list(out.values())


def estimated_candidates(model: str, settings: EstimateSettings) -> list[Candidate]:
    result = estimate(model, None, settings)
    return [Candidate(p.precision, p.inference_total_bytes, "estimated inference total")
            for p in result.precisions]


def _rank(candidates: list[Candidate], use_ppl: bool) -> list[Candidate]:
    def key(c: Candidate) -> tuple[float, float]:
        quality = c.ppl_ratio if use_ppl else quality_tier(c.precision)
        return (quality, c.need_bytes or 0)

    return sorted(candidates, key=key)


def _tied(a: Candidate, b: Candidate) -> bool:
    """Measured ratios whose difference lies inside its error (their standard errors combined)."""
    error = math.hypot(a.ppl_ratio_se or 0.0, b.ppl_ratio_se or 0.0)
    return abs(a.ppl_ratio - b.ppl_ratio) <= TIE_STANDARD_ERRORS * error


def choose(candidates: list[Candidate], budget: int, tolerance: float,
           notes: list[str]) -> str | None:
    """Mark each candidate's verdict; return the winner or None."""
    for c in candidates:
        c.fits = c.need_bytes is not None and c.need_bytes <= budget
    use_ppl = bool(candidates) and all(c.ppl_ratio is not None for c in candidates)
    if not use_ppl:
        notes.append("no measured perplexity for every precision: ranked by the expected quality "
                     f"order {_tier_order(candidates)}; tolerance not applied")
    eligible = []
    for c in candidates:
        if not c.fits:
            c.verdict = f"does not fit: needs {gib(c.need_bytes or 0)} > budget {gib(budget)}"
        elif use_ppl and c.ppl_ratio - 1 > tolerance:
            c.verdict = (f"quality: ppl +{(c.ppl_ratio - 1) * 100:.1f}% > tolerance "
                         f"{tolerance * 100:.1f}%")
        else:
            eligible.append(c)
    ranked = _rank(eligible, use_ppl)
    if not ranked:
        return None
    tied = [c for c in ranked if _tied(c, ranked[0])] if use_ppl else []
    if tied:  # within the error of the best ratio it is a tie, and the smaller one wins
        ranked.remove(winner := min(tied, key=lambda c: c.need_bytes or 0))
        ranked.insert(0, winner)
    winner = ranked[0]
    winner.verdict = "chosen: fits" + (f", ppl +{(winner.ppl_ratio - 1) * 100:.1f}%"
                                       if use_ppl else ", best expected quality that fits")
    for c in ranked[1:]:
        if use_ppl and c in tied and c.ppl_ratio != winner.ppl_ratio:
            c.verdict = ("fits, quality tied with the winner (the difference is inside its error) "
                         "but needs more memory")
            continue
        same = c in tied if use_ppl else quality_tier(c.precision) == quality_tier(winner.precision)
        c.verdict = ("fits, same quality as the winner but needs more memory" if same
                     else "fits but worse quality than the winner")
    return winner.precision


def _tier_order(candidates: list[Candidate]) -> str:
    """'fp32/bf16 > int8 > nf4 ~ nf4-dq > fp4' for the candidates at hand."""
    tiers: dict[int, list[str]] = {}
    for c in candidates:
        tiers.setdefault(quality_tier(c.precision), []).append(c.precision)
    return " > ".join("/".join(tiers[t]) for t in sorted(tiers))


def recommend(
    model: str, vram: str | int, max_ppl_increase: str | float = 0.05,
    results: str | None = None, settings: EstimateSettings | None = None,
) -> Recommendation:
    """The precision that fits VRAM with the best quality, with a reason for every other one."""
    from quantbench.results import read_results

    budget = vram if isinstance(vram, int) else parse_size(vram)
    tolerance = parse_fraction(max_ppl_increase)
    settings = settings or EstimateSettings()
    notes: list[str] = []
    candidates: list[Candidate] = []
    source = "estimated"
    if results:
        records, problems = read_results(results)
        notes += problems
        context = CUDA_CONTEXT_BYTES if settings.device.startswith("cuda") else 0
        candidates = measured_candidates(records, model, context, notes)
        if candidates:
            source = "measured"
            notes.append(f"memory is the measured peak plus {context // 2**20} MiB CUDA context")
        else:
            notes.append(f"no usable benchmark Results for '{model}' in {results}; estimated")
    if not candidates:
        candidates = estimated_candidates(model, settings)
        notes.append(f"memory is estimated for batch {settings.batch_size}, "
                     f"{settings.seq_len} tokens")
    winner = choose(candidates, budget, tolerance, notes)
    if winner is None:
        notes.append("nothing fits: try a smaller batch or sequence, or more memory")
    return Recommendation(model, budget, tolerance, source, winner, candidates, notes)
