"""recommend: the best-quality precision that fits, from Results or from the estimate."""

from __future__ import annotations

import pytest

from quantbench.errors import QuantbenchError
from quantbench.estimate import EstimateSettings, estimate
from quantbench.precisions import PRECISIONS, get_precision
from quantbench.recommend import parse_fraction, recommend
from quantbench.results import Result, RunSpec, append_result

MODEL = "llama-2-7b-arch"


def _tier(name: str) -> int:
    return get_precision(name).quality_tier


def test_estimated_pick_is_best_expected_quality_that_fits():
    settings = EstimateSettings(seq_len=1024)
    result = estimate(MODEL, None, settings)
    needs = {p.precision: p.inference_total_bytes for p in result.precisions}
    budget = sorted(needs.values())[len(needs) // 2]  # some fit, some do not
    rec = recommend(MODEL, budget, "5%", settings=settings)
    assert rec.source == "estimated"
    fitting = [n for n, need in needs.items() if need <= budget]
    best_tier = min(_tier(n) for n in fitting)
    assert _tier(rec.winner) == best_tier
    assert needs[rec.winner] == min(needs[n] for n in fitting if _tier(n) == best_tier)
    for c in rec.candidates:
        if c.precision not in fitting:
            assert c.verdict.startswith("does not fit")
    assert any("expected quality order" in n for n in rec.notes)


def _write(path, precision, peak, ppl_ratio, random_weights=False):
    result = Result(spec=RunSpec(model="m", precision=precision),
                    metrics={"peak_generate_bytes_b1": peak, "ppl_ratio": ppl_ratio},
                    random_weights=random_weights, device="test")
    append_result(path, result)


def test_measured_pick_respects_budget_and_tolerance(tmp_path):
    path = tmp_path / "results.jsonl"
    gib = 2**30
    _write(path, "fp16", 14 * gib, 1.0)
    _write(path, "int8", 7 * gib, 1.08)  # fits, but too much worse
    _write(path, "nf4-dq", 4 * gib, 1.03)
    _write(path, "fp4", 4 * gib, 1.04)
    rec = recommend("m", "8GiB", "5%", results=str(path))
    verdicts = {c.precision: c.verdict for c in rec.candidates}
    assert rec.source == "measured" and rec.winner == "nf4-dq"
    assert verdicts["fp16"].startswith("does not fit")
    assert verdicts["int8"].startswith("quality: ppl +8.0%")
    assert verdicts["fp4"] == "fits but worse quality than the winner"
    # a looser tolerance admits int8, which then loses on quality alone
    loose = recommend("m", "8GiB", "10%", results=str(path))
    assert loose.winner == "nf4-dq"
    assert {c.precision: c.verdict for c in loose.candidates}["int8"].startswith("fits but worse")
    # with room for fp16, the reference quality wins
    assert recommend("m", "16GiB", "5%", results=str(path)).winner == "fp16"


def test_random_weight_results_fall_back_to_expected_order(tmp_path):
    path = tmp_path / "results.jsonl"
    _write(path, "int8", 2**30, 1.5, random_weights=True)
    _write(path, "nf4", 2**29, 1.0, random_weights=True)
    rec = recommend("m", "8GiB", "5%", results=str(path))
    assert rec.winner == "int8"
    assert any("random weights" in n for n in rec.notes)


def test_nothing_fits():
    rec = recommend(MODEL, "1GiB")
    assert rec.winner is None
    assert all(c.verdict.startswith("does not fit") for c in rec.candidates)


@pytest.mark.parametrize("bad", ["8", "lots", "-1GiB"])
def test_bad_budget_is_a_user_error(bad):
    with pytest.raises(QuantbenchError):
        recommend(MODEL, bad)


def test_tolerance_parsing():
    assert parse_fraction("5%") == pytest.approx(0.05)
    assert parse_fraction("0.05") == pytest.approx(0.05)
    with pytest.raises(QuantbenchError):
        parse_fraction("five")


def test_every_precision_row_is_estimated_and_ranked():
    """A row added to the table is estimated and takes its scheme's tier, never a silent last."""
    rec = recommend(MODEL, "80GiB", settings=EstimateSettings(seq_len=256))
    ranked = {c.precision for c in rec.candidates}
    assert ranked == {n for n, p in PRECISIONS.items() if not p.scheme.offloads}
    assert rec.winner in ("fp32", "fp16", "bf16")
    worst = max(_tier(n) for n in ranked)
    assert {n for n in ranked if _tier(n) == worst} == {"hqq-3bit"}


def test_a_row_expanded_at_run_time_is_not_picked_for_its_packed_size():
    """gptq-4bit loads packed but runs dense: a budget its packed size fits but the dense model
    does not must not pick it."""
    settings = EstimateSettings(seq_len=1024)
    rows = {p.precision: p for p in estimate("smollm2-135m", ["gptq-4bit", "bf16", "nf4"], settings).precisions}
    gptq = rows["gptq-4bit"]
    assert gptq.inference_total_bytes == rows["bf16"].inference_total_bytes > rows["nf4"].inference_total_bytes
    packed_total = gptq.inference_total_bytes - gptq.run_weights_bytes + gptq.weights_bytes
    budget = (packed_total + gptq.inference_total_bytes) // 2
    rec = recommend("smollm2-135m", budget, "50%", settings=settings)
    verdicts = {c.precision: c.verdict for c in rec.candidates}
    assert verdicts["gptq-4bit"].startswith("does not fit") and verdicts["awq-4bit"].startswith("does not fit")
    assert not verdicts["nf4"].startswith("does not fit")

