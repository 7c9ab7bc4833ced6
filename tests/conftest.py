"""Shared fixtures: the real SmolLM2-135M on CPU, loaded once per precision per session."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread, here and in every worker process the tests start: on a small shared CPU, torch's
# threads spin against each other and against other processes (a tiny decode took 7x longer
# with two threads than with one while another job was running).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Triton decides at a kernel's definition whether the CPU interpreter runs it: set before any test
# module imports quantbench's kernels (the sm_90 compile tests run in a process without it).
os.environ.setdefault("TRITON_INTERPRET", "1")
warnings.filterwarnings("ignore")

MODEL = "smollm2-135m"
# Short calibration (4 samples of 128 tokens): every test that calibrates uses these, so one
# checkpoint per method and model is made and then found in QUANTBENCH_CACHE.
SHORT_CALIBRATION = {"calibration_samples": 4, "calibration_seq_len": 128}


@contextlib.contextmanager
def _restored_log_levels():
    """The CLI quiets chatty library loggers for its whole process; a test that calls it in
    process must not leave them quiet for the tests after it."""
    import logging

    from quantbench.cli import CHATTY_LOGGERS

    levels = {name: logging.getLogger(name).level for name in CHATTY_LOGGERS}
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@pytest.fixture(autouse=True)
def _library_log_levels():
    with _restored_log_levels():
        yield


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    from quantbench.models import resolve

    return resolve(MODEL).source


@pytest.fixture(scope="session")
def loaded_model():
    """load(MODEL, precision) once per precision for the whole session."""
    from quantbench import load

    cache: dict[str, object] = {}

    def get(precision: str):
        if precision not in cache:
            cache[precision] = load(MODEL, precision)
        return cache[precision]

    return get


DECODE_IDS = [[1, 504, 3458, 282, 4649, 314, 3, 7, 9, 11]]


def static_cache_step(model, plan, enabled: bool, decode=None):  # noqa: ANN001, ANN201
    """Prefill all but the last of DECODE_IDS into a fresh StaticCache (16 slots), then decode the
    last token with plan.enabled = `enabled`, through `decode` (default: the model itself; a
    callable returning logits). Returns (logits, cache), as the fast engine steps a model."""
    import torch
    from transformers import StaticCache

    ids = torch.tensor(DECODE_IDS)
    cache = StaticCache(config=model.config, max_cache_len=16)
    mask = torch.zeros(1, 16, dtype=torch.long)
    mask[:, :ids.shape[1]] = 1
    with torch.no_grad():
        model(ids[:, :-1], attention_mask=mask, cache_position=torch.arange(ids.shape[1] - 1), past_key_values=cache)
        plan.enabled = enabled
        try:
            step = decode or (lambda *a, **kw: model(*a, **kw).logits)
            return step(ids[:, -1:], attention_mask=mask, cache_position=torch.tensor([ids.shape[1] - 1]),
                        past_key_values=cache), cache
        finally:
            plan.enabled = False


# Prepended to a compile script: show(name, kernel, constexprs, pointer types[, asm]) prints
# "//// name" and the kernel's sm_90 PTX, or another stage's code ("ttir": Triton's IR before
# lowering), constexprs not named taking their defaults, as at launch.
_SM90_PREAMBLE = """
import re, sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


def show(name, kernel, constexprs, pointers, asm="ptx"):
    defaults = {p.name: p.default for p in kernel.params if p.is_constexpr and p.has_default}
    constexprs = defaults | constexprs
    signature = {arg: "constexpr" if arg in constexprs else pointers.get(arg, "*fp16") if arg.endswith("_ptr")
                 else "fp32" if arg in ("eps", "threshold", "scale") else "i32" for arg in kernel.arg_names}
    # pointers, strides (stride_x, sk_h, ...) and row lengths divisible by 16, as a launch with the
    # models' shapes specializes them (counts such as blocks per row or cache positions are left unknown)
    attrs = {(i,): [["tt.divisibility", 16]] for i, arg in enumerate(kernel.arg_names)
             if arg.endswith("_ptr") or re.fullmatch(r"stride_\\w+|s[a-z]_[a-z]|K|row_bytes", arg)}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    print("//// " + name)
    print(triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm[asm])
"""


def sm90_ptx(script: str, *args: str) -> dict[str, str]:
    """name -> sm_90 PTX of the kernels `script` passes to show(), compiled in a process of its own
    (the tests' own process runs kernels under Triton's interpreter)."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _SM90_PREAMBLE + textwrap.dedent(script), *args],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(part.split("\n", 1) for part in done.stdout.split("//// ")[1:])


def _main(*args: str) -> int:
    """The real CLI entry point, in process; its exit code."""
    from quantbench.cli import main

    old = sys.argv
    sys.argv = ["quantbench", *args]
    try:
        main()
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = old
    return 0


@pytest.fixture
def cli(capsys):
    """Run the real CLI entry point in-process; returns (exit code, stdout, stderr)."""

    def invoke(*args: str) -> tuple[int, str, str]:
        code = _main(*args)
        out = capsys.readouterr()
        return code, out.out, out.err

    return invoke


def inject(folder: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    """A sitecustomize that patches quantbench inside the worker processes only (this process
    has long imported it): every process started while `monkeypatch` holds runs it first."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(textwrap.dedent(body))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))


# One worker is killed as it starts loading (as the OOM killer would: no result, no goodbye),
# one runs out of memory right after its load metrics are recorded, where a GPU would run out in
# its first measurement; the import sits in the function because the worker imports quantbench.loading.
FAULTS = """
    import os, signal, torch, quantbench.loading as loading
    real = loading.load
    def load(model, precision="nf4", *args, **kwargs):
        if precision == "nf4":
            os.kill(os.getpid(), signal.SIGKILL)
        loaded = real(model, precision, *args, **kwargs)
        if precision == "int8":
            import quantbench.worker as worker
            def calibration_metrics(*args):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            worker.calibration_metrics = calibration_metrics
        return loaded
    loading.load = load
"""
FAULT_SWEEP_PRECISIONS = ["nf4", "int8", "fp32"]  # the faults first: the sweep must go on after them


@dataclass
class CliRun:
    code: int
    out: str
    err: str
    results: list  # what the results file held when this command ended


@dataclass
class FaultSweep:
    path: Path
    faulty: CliRun  # nf4 killed, int8 out of memory, fp32 measured
    rerun: CliRun  # the same command without the faults


@pytest.fixture(scope="session")
def fault_sweep(tmp_path_factory) -> FaultSweep:
    """`quantbench run` (load only: isolation is about processes, not numbers) with a killed and an
    out-of-memory worker, then the same command again once the faults are gone. Shared by the tests
    of the runner's isolation and of the CLI's exit codes: each worker costs seconds."""
    from quantbench.results import read_results

    folder = tmp_path_factory.mktemp("faults")
    path = folder / "r.jsonl"
    args = ["run", MODEL, "-p", ",".join(FAULT_SWEEP_PRECISIONS), "-o", str(path), "--no-latency", "--no-quality"]

    def invoke() -> CliRun:
        out, err = io.StringIO(), io.StringIO()
        with _restored_log_levels(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = _main(*args)
        return CliRun(code, out.getvalue(), err.getvalue(), read_results(path)[0])

    with pytest.MonkeyPatch.context() as monkeypatch:
        inject(folder / "inject", monkeypatch, FAULTS)
        faulty = invoke()
    return FaultSweep(path, faulty, invoke())


# --- running the suite on two cores (pytest-xdist, `-n 2 --dist loadgroup`) -------------------
# Each group runs in one worker process, so a module's and a shared sweep's fixtures are built once.
# The longest groups go first (the sweeps wait on their workers' processes), the short ones fill
# in at the end, so both cores finish at about the same time; unnamed groups follow in file order.
LONG_FIRST = ("fault_sweep", "test_run", "test_finetune", "test_quality", "test_quiet", "test_backends",
              "test_estimate", "test_calibration", "test_core", "test_engine")


def pytest_configure(config):
    config.addinivalue_line("markers", "xdist_group(name): run these tests in one worker process")


def pytest_sessionstart(session):
    """The offline model is converted once, here, before test processes could race to convert it."""
    if hasattr(session.config, "workerinput"):  # a test process: the controller did it
        return
    from quantbench.errors import QuantbenchError
    from quantbench.models import resolve

    with contextlib.suppress(QuantbenchError):  # the tests that need the model say why, one by one
        resolve(MODEL)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    def group(item) -> str:
        marked = item.get_closest_marker("xdist_group")
        if marked:
            return marked.args[0]
        name = "fault_sweep" if "fault_sweep" in item.fixturenames else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(name))
        return name

    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    groups = {id(item): group(item) for item in items}
    items.sort(key=lambda item: rank.get(groups[id(item)], len(rank)))
