"""Exit status a script can trust: 0 measured (a precision that does not fit is an answer),
1 another error (results kept, rerun redoes only it), 2 bad input, a second sweep refused.

Workers only load the real SmolLM2 (no latency, no quality), so each run takes seconds.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from quantbench.results import OUT_OF_MEMORY, read_results

LOAD_ONLY = ["--no-latency", "--no-quality"]


def inject(tmp_path: Path, monkeypatch, body: str) -> None:
    """A sitecustomize that patches the worker processes only (the parent has already started)."""
    site = tmp_path / "inject"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(textwrap.dedent(body))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))


def test_the_worker_and_the_runner_agree_on_out_of_memory():
    from quantbench.worker import OOM

    assert OOM == OUT_OF_MEMORY


def test_out_of_memory_is_an_answer_exit_0(cli, tmp_path, monkeypatch):
    inject(tmp_path, monkeypatch, """
        import torch, quantbench.loading as loading
        real = loading.load
        def load(model, precision="nf4", *args, **kwargs):
            if precision == "nf4":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return real(model, precision, *args, **kwargs)
        loading.load = load
    """)
    path = tmp_path / "r.jsonl"
    code, out, err = cli("run", "smollm2-135m", "-p", "fp32,nf4", "-o", str(path), *LOAD_ONLY)
    assert code == 0, err
    assert "out of memory" in out and "error:" not in err
    by_precision = {r.spec.precision: r for r in read_results(path)[0]}
    assert by_precision["nf4"].error == OUT_OF_MEMORY and by_precision["fp32"].ok


def test_killed_worker_is_exit_1_kept_and_the_rerun_redoes_only_it(cli, tmp_path, monkeypatch):
    inject(tmp_path, monkeypatch, """
        import os, signal, quantbench.worker as worker
        real = worker._load_metrics
        def _load_metrics(loaded, probe, rss_before):
            if loaded.precision.name == "nf4":
                os.kill(os.getpid(), signal.SIGKILL)  # mid-measurement, as the OOM killer would
            return real(loaded, probe, rss_before)
        worker._load_metrics = _load_metrics
    """)
    path = tmp_path / "r.jsonl"
    code, _, err = cli("run", "smollm2-135m", "-p", "fp32,nf4", "-o", str(path), *LOAD_ONLY)
    assert code == 1
    assert "error: nf4 ended in an error" in err and str(path) in err.replace("\n", "")
    first = {r.spec.precision: r for r in read_results(path)[0]}
    assert "crashed (exit code -9)" in first["nf4"].error and first["fp32"].ok

    monkeypatch.setenv("PYTHONPATH", os.environ["PYTHONPATH"].split(os.pathsep, 1)[1])
    code, _, err = cli("run", "smollm2-135m", "-p", "fp32,nf4", "-o", str(path), *LOAD_ONLY)
    assert code == 0, err
    lines = read_results(path)[0]
    assert [r.spec.precision for r in lines] == ["fp32", "nf4", "nf4"]  # fp32 was not redone
    assert lines[-1].ok and lines[-1].metrics["weights_footprint_bytes"] > 0


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
