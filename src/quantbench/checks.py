"""Pass/fail lines computed from Results: checks that fit the model, and the classic lab's.

No measuring: a check reads the metrics the runner wrote. A check whose inputs are absent is
reported as not applicable (passed=None) with the reason, never silently dropped. Memory ratios
compare weights footprints (`weights_footprint_bytes`), which do not depend on the allocator or
the batch size.

The classic bitsandbytes lab's bands were set for TinyLlama-1.1B, where embeddings are ~6 % of
the weights; they are shown for ~1.1B models only. Every model gets its own expectation instead:
each measured weights ratio against the one `quantbench.estimate` predicts from that model's
layout (config only; torch is imported for it on first use, never by `import`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from quantbench.results import Result

GB = 1e9
# The lab's 1-6 GB range is meant for TinyLlama-sized models; outside this band it says nothing.
LAB_PARAMETERS_RANGE = (0.9e9, 1.4e9)
SIXTEEN_BIT = ("fp16", "bf16")  # the same size, so either serves as the 16-bit baseline
FOUR_BIT_NF4 = ("nf4", "nf4-dq")
FIT_TOLERANCE = 0.03  # measured weights ratio within 3 % of the estimate's
Chosen = dict[str, Result]  # precision -> the Result that represents it


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool | None  # None: not applicable, `value` says why
    value: str
    expected: str

    @property
    def status(self) -> str:
        return {True: "pass", False: "fail", None: "n/a"}[self.passed]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


def number(value: Any) -> float | None:
    """A finite float, or None for anything missing, null, NaN or not a number."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def metric_of(result: Result, key: str) -> float | None:
    """A metric as a finite float, whatever the file held (absent, null, NaN, text)."""
    return number(result.metrics.get(key)) if isinstance(result.metrics, dict) else None


def parameter_count(results: Iterable[Result]) -> float | None:
    """Logical weights, as the inspection of any loaded precision counted them."""
    for result in results:
        info = result.info if isinstance(result.info, dict) else {}
        inspection = info.get("inspection") if isinstance(info.get("inspection"), dict) else {}
        count = number(inspection.get("parameters")) or number(info.get("parameters"))
        if count:
            return count
    return None


def _by_precision(results: Iterable[Result]) -> dict[str, Result]:
    """The last successful benchmark Result of each precision (a rerun replaces)."""
    chosen: Chosen = {}
    for result in results:
        if result.ok and result.spec.kind == "benchmark":
            chosen[str(result.spec.precision).lower()] = result
    return chosen


def _first(chosen: Chosen, names: tuple[str, ...], metric: str) -> tuple[str, float]:
    """(precision, value) of the first of `names` that has the metric, else ('', nan)."""
    for name in names:
        value = metric_of(chosen[name], metric) if name in chosen else None
        if value is not None:
            return name, value
    return "", math.nan


def _mib(size: float) -> str:
    return f"{size / 2**20:.1f} MiB"


def _na(name: str, expected: str, why: str) -> Check:
    return Check(name, None, why, expected)


def _fp16_size_check(chosen: Chosen, results: list[Result]) -> Check:
    name, expected = "fp16 weights for a ~1.1B model", "1-6 GB"
    low, high = LAB_PARAMETERS_RANGE
    params = parameter_count(results)
    if params is None:
        return _na(name, expected, "parameter count unknown")
    if not low <= params <= high:
        why = f"applies to ~1.1B-parameter models (this one: {params / 1e9:.2g}B)"
        return _na(name, expected, why)
    precision, weights = _first(chosen, SIXTEEN_BIT, "weights_footprint_bytes")
    if not precision:
        return _na(name, expected, "no fp16/bf16 weights footprint")
    passed = 1 * GB <= weights <= 6 * GB
    return Check(name, passed, f"{weights / GB:.2f} GB ({precision})", expected)


def _lab_sized(results: list[Result]) -> str | None:
    """None when the lab's bands apply to this model, else why not."""
    low, high = LAB_PARAMETERS_RANGE
    params = parameter_count(results)
    if params is None:
        return "parameter count unknown"
    if not low <= params <= high:
        return f"lab band for ~1.1B-parameter models (this one: {params / 1e9:.2g}B)"
    return None


def _ratio_check(chosen: Chosen, quantized: tuple[str, ...], bounds: tuple[float, float],
                 not_lab_sized: str | None = None) -> Check:
    low, high = bounds
    name, expected = f"{quantized[0]}/fp16 weights ratio", f"{low:g}-{high:g}"
    if not_lab_sized:
        return _na(name, expected, not_lab_sized)
    q_name, q_bytes = _first(chosen, quantized, "weights_footprint_bytes")
    base_name, base_bytes = _first(chosen, SIXTEEN_BIT, "weights_footprint_bytes")
    if not q_name or not base_name:
        missing = quantized[0] if not q_name else "fp16/bf16"
        return _na(name, expected, f"no {missing} weights footprint")
    ratio = q_bytes / base_bytes
    value = f"{ratio:.3f} ({q_name} {_mib(q_bytes)} / {base_name} {_mib(base_bytes)})"
    return Check(name, low <= ratio <= high, value, expected)


def _order_check(chosen: Chosen) -> Check:
    name, expected = "weights order", "nf4 < int8 < fp16"
    groups = (FOUR_BIT_NF4, ("int8",), SIXTEEN_BIT)
    sizes = [_first(chosen, names, "weights_footprint_bytes") for names in groups]
    if not all(precision for precision, _ in sizes):
        return _na(name, expected, "needs nf4, int8 and fp16 weights footprints")
    (_, nf4), (_, int8), (_, fp16) = sizes
    value = " / ".join(f"{p} {_mib(b)}" for p, b in sizes)
    return Check(name, nf4 < int8 < fp16, value, expected)


def _ppl_ratio(chosen: Chosen, name: str) -> float | None:
    """The runner's ppl_ratio, else the ratio to a 16-bit or fp32 run of the same model."""
    result = chosen[name]
    ratio = metric_of(result, "ppl_ratio")
    if ratio is not None:
        return ratio
    ppl = metric_of(result, "perplexity")
    _, reference = _first(chosen, (*SIXTEEN_BIT, "fp32"), "perplexity")
    return ppl / reference if ppl is not None and not math.isnan(reference) else None


def _quality_check(chosen: Chosen, names: tuple[str, ...], limit: float, random: bool) -> Check:
    name, expected = f"{names[0]} perplexity ratio", f"< {limit:g}"
    if random:
        return _na(name, expected, "random weights: quality is meaningless")
    for precision in names:
        if precision in chosen and (ratio := _ppl_ratio(chosen, precision)) is not None:
            return Check(name, ratio < limit, f"{ratio:.3f} ({precision})", expected)
    return _na(name, expected, f"no {names[0]} perplexity")


# ---------------------------------------------------------------- checks that fit the model


def _offline_config(model: str) -> Any:
    """The model's config without a network: an offline alias, a folder, or the Hub cache."""
    from quantbench.models import OFFLINE_ALIASES, load_config

    if model.strip().lower() in OFFLINE_ALIASES or (Path(model) / "config.json").is_file():
        return load_config(model)
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(model, "config.json")
    except Exception:  # not shaped like a Hub id
        cached = None
    if not isinstance(cached, str):
        raise LookupError(f"config of '{model}' not available offline")
    return load_config(str(Path(cached).parent))


@functools.lru_cache(maxsize=32)
def predicted_weights(model: str, precisions: tuple[str, ...], compute_dtype: str | None,
                      skip_modules: tuple[str, ...] | None, trust_remote_code: bool) -> dict[str, int]:
    """precision -> weights bytes as `quantbench.estimate` predicts them for this model."""
    from quantbench.estimate import EstimateSettings, estimate

    skipped = {} if skip_modules is None else {"skip_modules": skip_modules}
    settings = EstimateSettings(device="cpu", compute_dtype=compute_dtype,
                                trust_remote_code=trust_remote_code, **skipped)
    found = estimate(model, list(precisions), settings, config=_offline_config(model))
    return {p.precision: p.weights_bytes for p in found.precisions}


def _estimate_of(result: Result, precisions: tuple[str, ...]) -> dict[str, int]:
    """Weights predicted with the settings `result` was loaded with (compute dtype, skipped)."""
    info = result.info if isinstance(result.info, dict) else {}
    inspection = info.get("inspection") if isinstance(info.get("inspection"), dict) else {}
    options = result.spec.options if isinstance(result.spec.options, dict) else {}
    skip = options.get("skip_modules")
    return predicted_weights(
        str(result.spec.model), precisions, inspection.get("compute_dtype") or options.get("compute_dtype"),
        tuple(skip) if isinstance(skip, (list, tuple)) else None, bool(options.get("trust_remote_code")),
    )


def _fit_checks(chosen: Chosen) -> list[Check]:
    """Each measured weights ratio to the baseline against the estimate's, within 3 %."""
    name, expected = "weights vs estimate", f"within {FIT_TOLERANCE:.0%} of the estimate"
    base_name, base_bytes = _first(chosen, (*SIXTEEN_BIT, "fp32"), "weights_footprint_bytes")
    if not base_name:
        return [_na(name, expected, "no fp16/bf16/fp32 weights footprint")]
    try:
        from quantbench.estimate import default_precisions

        modelled = set(default_precisions())
    except ImportError as err:
        return [_na(name, expected, f"estimate unavailable ({err.name} missing)")]
    measured = {p: b for p, r in chosen.items()
                if p in modelled and p != base_name
                and (b := metric_of(r, "weights_footprint_bytes")) is not None}
    if not measured:
        return [_na(name, expected, f"no other precision with a modelled layout than {base_name}")]
    checks = []
    for precision, size in measured.items():
        try:
            predicted = _estimate_of(chosen[precision], (precision,))[precision]
            predicted_base = _estimate_of(chosen[base_name], (base_name,))[base_name]
        except Exception as err:  # no config offline, an architecture estimate does not know
            return [_na(name, expected, f"no estimate: {str(err).splitlines()[0] if str(err) else err!r}")]
        ratio, want = size / base_bytes, predicted / predicted_base
        checks.append(Check(
            f"{precision}/{base_name} weights vs estimate", abs(ratio / want - 1) <= FIT_TOLERANCE,
            f"{ratio:.3f} (estimate {want:.3f})", f"{want:.3f} ± {FIT_TOLERANCE:.0%}",
        ))
    return checks


def run_checks(results: Iterable[Result]) -> list[Check]:
    """The checks for the Results of one model (other kinds and errors are ignored)."""
    results = list(results)
    chosen = _by_precision(results)
    random = any(r.random_weights for r in results)
    not_lab_sized = _lab_sized(results)
    return [
        *_fit_checks(chosen),
        _fp16_size_check(chosen, results),
        _ratio_check(chosen, ("int8",), (0.3, 0.8), not_lab_sized),
        _ratio_check(chosen, FOUR_BIT_NF4, (0.15, 0.5), not_lab_sized),
        _order_check(chosen),
        _quality_check(chosen, ("int8",), 1.3, random),
        _quality_check(chosen, FOUR_BIT_NF4, 1.5, random),
    ]


def checks_by_model(results: Iterable[Result]) -> dict[str, list[Check]]:
    """run_checks for each model that has benchmark Results, in first-seen order."""
    models: dict[str, list[Result]] = {}
    for result in results:
        if result.spec.kind == "benchmark":
            models.setdefault(result.spec.model, []).append(result)
    return {model: run_checks(group) for model, group in models.items()}
