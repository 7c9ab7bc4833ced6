"""The benchmark matrix on the real SmolLM2 on CPU, kept fast with short settings."""

from __future__ import annotations

import json

import pytest
from conftest import FAULT_SWEEP_PRECISIONS, MODEL, inject

from quantbench.results import OUT_OF_MEMORY, Workload, read_results
from quantbench.runner import run

# 512 tokens in 128-token windows: SmolLM2's int8 and nf4 sit far inside the bounds below
# (ppl ratio 1.002 and 1.239, top-1 0.926 and 0.716), and each worker scores them in seconds.
QUALITY_ONLY = Workload(latency=False, ppl_context=128, ppl_stride=64, ppl_max_tokens=512)
TINY_LATENCY = ["--no-quality", "--prompt-lengths", "16,48", "--batch-sizes", "1,2", "--new-tokens", "6",
                "--repeats", "2", "--warmup", "1"]
EPS = 0.01  # quantization may, by luck, score a hair better than the reference


@pytest.fixture(scope="module")
def quality_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "results.jsonl"
    results = run("smollm2-135m", ["int8", "nf4"], QUALITY_ONLY, path)
    return path, {r.spec.precision: r for r in results}


def test_reference_runs_first_and_every_precision_has_a_result(quality_run):
    path, by_precision = quality_run
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["spec"]["precision"] for line in lines] == ["fp32", "int8", "nf4"]
    assert all(r.ok for r in by_precision.values()), {p: r.error for p, r in by_precision.items()}
    for result in by_precision.values():
        assert result.versions["torch"] and result.device.startswith("cpu") and result.timestamp
        assert result.info["memory_source"] == "process RSS (CPU)"


def test_quantized_perplexity_rises_within_the_lab_bounds(quality_run):
    _, r = quality_run
    assert r["fp32"].metrics["ppl_ratio"] == pytest.approx(1.0)
    assert 1 - EPS < r["int8"].metrics["ppl_ratio"] < 1.3
    assert 1 - EPS < r["nf4"].metrics["ppl_ratio"] < 1.5
    # 4-bit loses more than 8-bit: the ordering the lab expects
    assert r["nf4"].metrics["kl_mean"] > r["int8"].metrics["kl_mean"]
    # the tokens scored are the same for all: same ids, same windows
    assert len({x.metrics["scored_tokens"] for x in r.values()}) == 1


def test_kl_positive_for_quantized_and_top1_high_for_int8(quality_run):
    _, r = quality_run
    for precision in ("int8", "nf4"):
        assert r[precision].metrics["kl_mean"] > 0
        assert r[precision].metrics["kl_p99"] >= r[precision].metrics["kl_median"]
    assert r["int8"].metrics["top1_agreement"] > 0.85
    assert r["nf4"].metrics["top1_agreement"] < r["int8"].metrics["top1_agreement"] + EPS


def test_sliding_windows_score_every_token_once():
    from quantbench.measure.quality import windows

    for n, context, stride in [(1000, 256, 128), (257, 256, 256), (50, 256, 16), (999, 100, 1)]:
        targets = [t for _, end, first in windows(n, context, stride) for t in range(first, end)]
        assert targets == list(range(1, n))
        assert all(end - begin <= context for begin, end, _ in windows(n, context, stride))


def test_rerun_skips_finished_specs(quality_run):
    path, before = quality_run
    lines_before = path.read_text().splitlines()
    again = run("smollm2-135m", ["int8", "nf4"], QUALITY_ONLY, path)
    assert path.read_text().splitlines() == lines_before
    assert [r.timestamp for r in again] == [before[p].timestamp for p in ("fp32", "int8", "nf4")]


def test_corrupt_line_is_reported_and_skipped(quality_run, tmp_path, capsys, cli):
    import shutil

    path, _ = quality_run
    copy = tmp_path / "copy.jsonl"
    lines = path.read_text().splitlines()
    copy.write_text("\n".join([lines[0], '{"spec": {"model": "trunc', *lines[1:]]) + "\n")
    # the reference log-probs travel with the file, so resuming has nothing left to measure
    shutil.copytree(path.with_name(path.name + ".ref"), copy.with_name(copy.name + ".ref"))
    results, problems = read_results(copy)
    assert len(results) == 3 and len(problems) == 1 and "copy.jsonl:2" in problems[0]
    again = run("smollm2-135m", ["int8", "nf4"], QUALITY_ONLY, copy)  # resumes despite it
    assert len(again) == 3 and len(read_results(copy)[0]) == 3  # nothing measured again
    assert "copy.jsonl:2: skipped unreadable line" in capsys.readouterr().err
    code, out, err = cli("report", str(copy), "--format", "csv")
    assert code == 0 and "int8" in out and "skipped unreadable line" in err


def test_crash_in_one_precision_leaves_the_others_intact(fault_sweep):
    results = {r.spec.precision: r for r in fault_sweep.faulty.results}
    assert [r.spec.precision for r in fault_sweep.faulty.results] == FAULT_SWEEP_PRECISIONS  # each kept
    assert "crashed (exit code -9)" in results["nf4"].error and not results["nf4"].metrics
    assert results["fp32"].ok and results["fp32"].metrics["weights_footprint_bytes"] > 0
    assert "perplexity" not in results["fp32"].metrics and "decode_ms_per_token" not in results["fp32"].metrics


def test_out_of_memory_is_a_result_and_the_sweep_goes_on(fault_sweep):
    results = {r.spec.precision: r for r in fault_sweep.faulty.results}
    assert results["int8"].error == OUT_OF_MEMORY
    # what was measured before the OOM is kept beside the error
    assert results["int8"].metrics["weights_footprint_bytes"] > 0
    assert results["fp32"].ok  # measured after it


def test_random_weight_models_never_get_quality(monkeypatch, tmp_path):
    from quantbench.precisions import LoadOptions
    from quantbench.runner import build_specs

    specs = build_specs("x", ["nf4"], Workload(), LoadOptions(), None, "cpu")
    assert [s.precision for s in specs] == ["fp32", "nf4"]
    no_quality = build_specs("x", ["nf4"], Workload(quality=False), LoadOptions(), None, "cpu")
    assert [s.precision for s in no_quality] == ["nf4"]


def test_reference_model_is_measured_as_its_own_run_would_measure_it(tmp_path):
    """--reference-model: the reference row loads that model, with the workload (and so the
    resume key and reference file) that `run ORIGINAL` gives it; the other rows carry the option,
    and results from before it existed keep their keys."""
    from quantbench.precisions import LoadOptions
    from quantbench.runner import _job, build_specs, reference_file

    plain = build_specs("orig", ["fp32"], Workload(), LoadOptions(), None, "cpu")
    specs = build_specs("packed", ["as-saved"], Workload(reference_model="orig"), LoadOptions(), None, "cpu")
    assert [(s.model, s.precision) for s in specs] == [("orig", "fp32"), ("packed", "as-saved")]
    assert specs[0] == plain[0] and specs[0].key() == plain[0].key()
    assert "reference_model" not in plain[0].workload and specs[1].workload["reference_model"] == "orig"
    results = tmp_path / "r.jsonl"
    assert reference_file(specs[1], results) == reference_file(plain[0], results)
    assert _job(specs[0], "fp32", results).save_reference and not _job(specs[1], "fp32", results).save_reference
    packed_fp32 = build_specs("packed", ["fp32"], Workload(reference_model="orig"), LoadOptions(), None, "cpu")[1]
    assert packed_fp32.model == "packed" and not _job(packed_fp32, "fp32", results).save_reference


def test_reference_model_with_random_weights_is_refused(cli):
    code, _, err = cli("run", "smollm2-135m", "-p", "fp32", "--reference-model", "tinyllama-1.1b-arch")
    assert code == 2 and "random weights" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """`quantbench run -p fp32,nf4` with short latency settings, SIGINT while nf4 loads.

    nf4's worker announces itself and then waits for as long as the runner lives, so the signal
    always lands mid-sweep, however slow the machine: the test waits on that file, not on a clock.
    fp32, finished before, is the one latency measurement of the suite."""
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path_factory.mktemp("interrupted")
    started, path = folder / "nf4-started", folder / "r.jsonl"
    with pytest.MonkeyPatch.context() as monkeypatch:
        inject(folder / "inject", monkeypatch, f"""
            import os, pathlib, time, quantbench.loading as loading
            real = loading.load
            def load(model, precision="nf4", *args, **kwargs):
                if precision == "nf4":
                    pathlib.Path({str(started)!r}).touch()
                    parent = os.getppid()
                    while os.getppid() == parent:  # until the runner is gone
                        time.sleep(0.2)
                    os._exit(1)
                return real(model, precision, *args, **kwargs)
            loading.load = load
        """)
        cmd = [sys.executable, "-m", "quantbench", "run", MODEL, "-p", "fp32,nf4", *TINY_LATENCY, "-o", str(path)]
        # a suite started in the background inherits SIGINT ignored (as a shell's `cmd &` does);
        # the runner gets the disposition a terminal gives it, so Ctrl-C is what is tested
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 600  # a failure bound only; the wait ends on the file
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert started.exists(), "the second precision's worker never started"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, err, read_results(path)[0]


def test_ctrl_c_keeps_what_was_measured(interrupted):
    """SIGINT mid-sweep: exit 130, one line, the finished precision stays in the file."""
    code, err, kept = interrupted
    assert code == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert [r.spec.precision for r in kept] == ["fp32"] and kept[0].ok


def test_latency_metrics_on_cpu(interrupted):
    (result,) = interrupted[2]
    assert result.ok, result.error
    m = result.metrics
    for key in ("prefill_ms_p16", "prefill_ms_p48", "ttft_ms", "decode_ms_per_token",
                "tokens_per_s_b1", "tokens_per_s_b2"):
        assert m[key] > 0, key
    assert m["decode_ms_per_token_p10"] <= m["decode_ms_per_token_p90"]
    assert m["peak_generate_bytes_b1"] is None  # the CPU has no resettable peak: not faked
    assert "perplexity" not in m
    assert result.info["decode_timing"] == "(generate(N) - generate(1)) / (N - 1)"  # the eager engine
