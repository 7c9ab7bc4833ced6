"""Timings taken on a shared device are recorded as such and flagged in the report."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from quantbench.measure import hygiene
from quantbench.measure.hygiene import DeviceWatch, cpu_verdict, gpu_verdict
from quantbench.report import render
from quantbench.report.table import SHARED_MARK, status, summary
from quantbench.results import Result, RunSpec


def test_cpu_is_shared_when_others_use_more_than_the_free_cores():
    assert cpu_verdict(other_cores=0.2, cores=2, threads=2) is None  # daemons' sliver
    assert "1.0 of 2 CPU cores" in cpu_verdict(other_cores=1.0, cores=2, threads=2)
    assert cpu_verdict(other_cores=1.2, cores=16, threads=8) is None  # fits in the idle cores
    assert cpu_verdict(other_cores=9.0, cores=16, threads=8) is not None


def test_gpu_is_shared_when_another_process_holds_a_context():
    me = os.getpid()
    assert gpu_verdict({me}, me) is None
    assert gpu_verdict(set(), me) is None
    assert gpu_verdict({me, 4242}, me) == "1 other process(es) on the GPU (pid 4242)"
    assert gpu_verdict({77}, me) is None  # a container's view: the one entry is us
    assert gpu_verdict({77, 78}, me) is not None


def test_gpu_watch_samples_processes_through_nvml(monkeypatch):
    """The watch on a GPU: what NVML lists during the timed block decides."""
    import torch

    seen = iter([{os.getpid()}, {os.getpid(), 999_999}])
    monkeypatch.setattr(hygiene, "gpu_processes", lambda index: next(seen, {os.getpid()}))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    with DeviceWatch("cuda") as watch:
        time.sleep(0.05)
    assert watch.shared == "1 other process(es) on the GPU (pid 999999)"
    assert watch.details["gpu_processes"] == [os.getpid(), 999_999]


def test_busy_neighbour_on_the_cpu_is_detected():
    """Measured: timing beside one busy process (decode 302 ms/token instead of 69.5 here)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(psutil.cpu_count())
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        with DeviceWatch("cpu") as watch:
            end = time.perf_counter() + 1.5
            while time.perf_counter() < end:  # our own work, on one core
                pass
    finally:
        hog.kill()
        hog.wait()
        torch.set_num_threads(threads)
    assert watch.shared is not None and "CPU cores busy" in watch.shared, watch.details
    assert watch.details["other_busy_cores"] >= 0.6


@pytest.fixture
def shared_result():
    return Result(RunSpec("smollm2-135m", "fp32"), metrics={"decode_ms_per_token": 302.0},
                  shared_device="other processes kept 1.0 of 2 CPU cores busy while 2 thread(s) measured")


def test_report_flags_timings_from_a_shared_device(shared_result):
    clean = Result(RunSpec("smollm2-135m", "nf4"), metrics={"decode_ms_per_token": 70.0})
    assert SHARED_MARK in status(shared_result) and SHARED_MARK not in status(clean)
    table = summary([shared_result, clean])
    assert any("shared device" in note for note in table.notes)
    assert "shared device" not in " ".join(summary([clean]).notes)
    for fmt in ("md", "table"):
        assert SHARED_MARK in render([shared_result, clean], fmt)


def test_shared_device_survives_the_results_file(shared_result, tmp_path):
    from quantbench.results import append_result, read_results

    path = tmp_path / "r.jsonl"
    append_result(path, shared_result)
    (back,), _ = read_results(path)
    assert back.shared_device == shared_result.shared_device


def test_bandwidth_probe_never_turns_a_fitted_model_into_out_of_memory(monkeypatch):
    """The copy-bandwidth probe runs after a precision's measurement; on a nearly full card it
    must step aside (None), not raise the out-of-memory that would overwrite a good result."""
    import torch

    from quantbench.measure import memory

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (200 << 20, 80 << 30))
    asked = []

    def full_card(*args, **kwargs):
        asked.append(args[2][0])
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(torch, "randint", full_card)
    assert memory.copy_bandwidth_bytes_per_s("cuda:0") is None
    assert asked == []  # a quarter of 200 MiB is below the probe's floor: not even tried

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 << 30, 80 << 30))
    assert memory.copy_bandwidth_bytes_per_s("cuda:0") is None
    assert asked[-1] == (3 << 30) // 4  # two buffers: half of what is free, never the fixed 2 GiB
