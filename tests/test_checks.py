"""The lab's pass/fail checks, computed from Results alone."""

import ast
from pathlib import Path

import quantbench.checks as checks_module
from quantbench.checks import checks_by_model, run_checks
from quantbench.results import Result, RunSpec

GIB = 2**30


def bench(model, precision, params=None, random=False, error=None, **metrics):
    info = {"inspection": {"parameters": params}} if params else {}
    return Result(RunSpec(model, precision), metrics=metrics, info=info, error=error,
                  random_weights=random)


def by_name(checks):
    return {c.name: c for c in checks}


def tinyllama(nf4_bytes=0.7 * GIB, **extra):
    """Memory-only runs of a random-weight 1.1B architecture, sizes as a lab would see."""
    return [
        bench("tinyllama-1.1b-arch", "fp16", 1.1e9, True, weights_footprint_bytes=2.05 * GIB),
        bench("tinyllama-1.1b-arch", "int8", 1.1e9, True, weights_footprint_bytes=1.15 * GIB),
        bench("tinyllama-1.1b-arch", "nf4", 1.1e9, True, weights_footprint_bytes=nf4_bytes,
              **extra),
    ]


def test_lab_memory_checks_pass_and_quality_is_not_applicable_for_random_weights():
    checks = by_name(run_checks(tinyllama(perplexity=9.0, ppl_ratio=1.01)))
    assert checks["fp16 weights for a ~1.1B model"].passed is True
    assert "2.20 GB" in checks["fp16 weights for a ~1.1B model"].value
    assert checks["int8/fp16 weights ratio"].passed is True
    assert checks["int8/fp16 weights ratio"].value.startswith("0.561")
    assert checks["nf4/fp16 weights ratio"].passed is True
    assert checks["weights order"].passed is True
    # a perplexity written for random weights is never judged
    for name in ("int8 perplexity ratio", "nf4 perplexity ratio"):
        assert checks[name].passed is None and "random" in checks[name].value


def test_memory_checks_fail_with_the_values_shown():
    checks = by_name(run_checks(tinyllama(nf4_bytes=1.5 * GIB)))
    ratio = checks["nf4/fp16 weights ratio"]
    assert ratio.passed is False and ratio.value.startswith("0.732")
    assert ratio.expected == "0.15-0.5"
    assert checks["weights order"].passed is False
    assert ratio.status == "fail" and ratio.to_dict()["status"] == "fail"


def test_size_check_applies_only_to_about_1_1b_parameters():
    results = [bench("smollm2-135m", "fp16", 134_515_008, weights_footprint_bytes=270e6)]
    check = by_name(run_checks(results))["fp16 weights for a ~1.1B model"]
    assert check.passed is None and "0.13B" in check.value
    check = by_name(run_checks([bench("m", "fp16", weights_footprint_bytes=2e9)]))[check.name]
    assert check.passed is None and "unknown" in check.value


def test_quality_checks_use_ppl_ratio_or_compute_it_from_perplexity():
    results = [
        bench("smollm2-135m", "fp16", perplexity=10.0),
        bench("smollm2-135m", "int8", perplexity=14.0),  # ratio 1.4 >= 1.3: fail
        bench("smollm2-135m", "nf4", perplexity=99.0, ppl_ratio=1.2),  # the runner's ratio wins
    ]
    checks = by_name(run_checks(results))
    assert checks["int8 perplexity ratio"].passed is False
    assert checks["int8 perplexity ratio"].value == "1.400 (int8)"
    assert checks["nf4 perplexity ratio"].passed is True
    assert checks["nf4 perplexity ratio"].value == "1.200 (nf4)"


def test_absent_inputs_errors_and_junk_values_are_not_applicable_not_crashes():
    results = [
        bench("m", "fp16", weights_footprint_bytes=None),
        bench("m", "int8", error="out of memory", weights_footprint_bytes=1e9),
        bench("m", "nf4", weights_footprint_bytes=float("nan"), perplexity="oops"),
    ]
    checks = run_checks(results)
    assert len(checks) == 7
    assert all(c.passed is None and c.status == "n/a" and c.value for c in checks)
    assert all(c.passed is None for c in run_checks([]))


def test_nf4_dq_stands_in_for_nf4_and_bf16_for_fp16():
    results = [bench("m", "bf16", 1.1e9, weights_footprint_bytes=1000.0),
               bench("m", "nf4-dq", 1.1e9, weights_footprint_bytes=300.0)]
    check = by_name(run_checks(results))["nf4/fp16 weights ratio"]
    assert check.passed is True and "nf4-dq" in check.value and "bf16" in check.value


def test_checks_by_model_groups_benchmarks_and_ignores_other_kinds():
    results = [*tinyllama(), bench("smollm2-135m", "fp16", weights_footprint_bytes=2.7e8),
               Result(RunSpec("smollm2-135m", "nf4", kind="finetune"), metrics={"loss": 2.0})]
    grouped = checks_by_model(results)
    assert list(grouped) == ["tinyllama-1.1b-arch", "smollm2-135m"]
    assert by_name(grouped["tinyllama-1.1b-arch"])["weights order"].passed is True


def test_checks_and_report_modules_do_not_import_torch():
    files = [Path(checks_module.__file__), *Path(checks_module.__file__).parent.glob("report/*.py")]
    assert len(files) >= 6
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] != "torch", path
                assert name not in ("quantbench", "quantbench.loading", "quantbench.inspect",
                                    "quantbench.precisions"), (path, name)


def real_result(loaded, precision: str) -> Result:
    """What the worker records after loading, from a real load of SmolLM2 on this machine."""
    inspection = loaded.inspection.to_dict()
    return Result(RunSpec("smollm2-135m", precision), info={"inspection": inspection},
                  metrics={"weights_footprint_bytes": inspection["footprint_bytes"]})


def test_default_run_on_smollm2_shows_no_fail_and_fits_the_estimate(loaded_model):
    """The CPU defaults (fp32 reference, fp16, int8, nf4): the 1.1B bands are n/a, the model's own pass."""
    results = [real_result(loaded_model(p), p) for p in ("fp32", "fp16", "int8", "nf4")]
    checks = by_name(run_checks(results))
    assert not [c for c in checks.values() if c.passed is False], checks
    for precision in ("fp32", "int8", "nf4"):
        fit = checks[f"{precision}/fp16 weights vs estimate"]
        assert fit.passed is True, fit
    # SmolLM2's tied embedding is ~21 % of its weights: far above the 1.1B lab's 0.3-0.8 band edge
    assert float(checks["int8/fp16 weights vs estimate"].value.split()[0]) > 0.8
    for name in ("int8/fp16 weights ratio", "nf4/fp16 weights ratio", "fp16 weights for a ~1.1B model"):
        assert checks[name].passed is None and "1.1B" in checks[name].value
    assert checks["weights order"].passed is True


def test_weights_off_the_estimate_by_more_than_3_percent_fail(loaded_model):
    results = [real_result(loaded_model(p), p) for p in ("fp16", "nf4")]
    nf4 = results[1].metrics["weights_footprint_bytes"]
    results[1].metrics["weights_footprint_bytes"] = nf4 * 1.02
    assert by_name(run_checks(results))["nf4/fp16 weights vs estimate"].passed is True
    results[1].metrics["weights_footprint_bytes"] = nf4 * 1.05
    check = by_name(run_checks(results))["nf4/fp16 weights vs estimate"]
    assert check.passed is False and "estimate" in check.value and check.expected.endswith("± 3%")


def test_fit_check_is_not_applicable_without_a_config_offline_or_a_modelled_layout():
    checks = run_checks([bench("no-such-org/model", "fp16", weights_footprint_bytes=2e9),
                         bench("no-such-org/model", "nf4", weights_footprint_bytes=6e8)])
    (fit,) = [c for c in checks if c.name == "weights vs estimate"]
    assert fit.passed is None and "not available offline" in fit.value
    checks = run_checks([bench("smollm2-135m", "bf16", weights_footprint_bytes=2.7e8),
                         bench("smollm2-135m", "int8-offload", weights_footprint_bytes=1e8)])  # a placement
    (fit,) = [c for c in checks if c.name == "weights vs estimate"]
    assert fit.passed is None and "modelled layout" in fit.value
