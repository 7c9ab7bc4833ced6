"""Exit status a script can trust: 0 measured (a precision that does not fit is an answer),
1 another error (results kept, rerun redoes only it), 2 bad input, a second sweep refused.

Workers only load the real SmolLM2 (no latency, no quality); the killed and out-of-memory
workers are conftest's fault sweep, shared with the runner's isolation tests.
"""

from __future__ import annotations

import os

import pytest
from conftest import FAULT_SWEEP_PRECISIONS

from quantbench.results import OUT_OF_MEMORY

LOAD_ONLY = ["--no-latency", "--no-quality"]


def test_the_worker_and_the_runner_agree_on_out_of_memory():
    from quantbench.worker import OOM

    assert OOM == OUT_OF_MEMORY


def test_killed_worker_is_exit_1_kept_and_the_rerun_redoes_only_it(fault_sweep):
    faulty, path = fault_sweep.faulty, fault_sweep.path
    assert faulty.code == 1
    # only the killed worker is an error: the out-of-memory int8 before it is an answer
    assert "error: nf4 ended in an error" in faulty.err and str(path) in faulty.err.replace("\n", "")
    first = {r.spec.precision: r for r in faulty.results}
    assert "crashed (exit code -9)" in first["nf4"].error and first["fp32"].ok

    rerun = fault_sweep.rerun
    assert rerun.code == 0, rerun.err
    # only nf4 was measured again: fp32 was measured, int8 does not fit
    assert [r.spec.precision for r in rerun.results] == [*FAULT_SWEEP_PRECISIONS, "nf4"]
    assert rerun.results[-1].ok and rerun.results[-1].metrics["weights_footprint_bytes"] > 0


def test_out_of_memory_is_an_answer_exit_0(fault_sweep):
    rerun = fault_sweep.rerun  # everything answered: fp32 and nf4 measured, int8 out of memory
    assert rerun.code == 0, rerun.err
    assert "out of memory" in rerun.out and "error:" not in rerun.err
    assert {r.spec.precision: r for r in rerun.results}["int8"].error == OUT_OF_MEMORY


def test_second_sweep_on_the_same_file_is_refused(cli, tmp_path):
    from quantbench.lock import results_lock

    path = tmp_path / "r.jsonl"
    with results_lock(path):  # a sweep in progress (flock: per open file, so this holds it)
        code, _, err = cli("run", "smollm2-135m", "-p", "fp32", "-o", str(path), *LOAD_ONLY)
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: '{path}' is being written by another quantbench run (pid {os.getpid()}); "
        "wait for it to finish or pass another --results file"
    ]
    assert not path.exists() or not path.read_text().strip()


def test_lock_is_released_when_the_sweep_ends_however_it_ends(tmp_path):
    from quantbench.errors import QuantbenchError
    from quantbench.lock import results_lock

    path = tmp_path / "r.jsonl"
    with pytest.raises(RuntimeError), results_lock(path):
        raise RuntimeError("a sweep that failed")
    with results_lock(path), pytest.raises(QuantbenchError, match="another quantbench run"), \
            results_lock(path):
        pass
    with results_lock(path):  # free again
        pass


def test_exit_codes_are_documented_in_help(cli):
    for args in (["--help"], ["run", "--help"]):
        code, out, _ = cli(*args)
        text = " ".join(out.split())
        assert code == 0 and "Exit status: 0" in text and "2 bad input" in text and "130" in text
