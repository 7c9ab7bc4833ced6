"""Shared fixtures: the real SmolLM2-135M on CPU, loaded once per precision per session."""

from __future__ import annotations

import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread, here and in every worker process the tests start: on a small shared CPU, torch's
# threads spin against each other and against other processes (a tiny decode took 7x longer
# with two threads than with one while another job was running).
os.environ.setdefault("OMP_NUM_THREADS", "1")
warnings.filterwarnings("ignore")

MODEL = "smollm2-135m"


@pytest.fixture(autouse=True)
def _library_log_levels():
    """The CLI quiets chatty library loggers for its whole process; a test that calls it in
    process must not leave them quiet for the tests after it."""
    import logging

    from quantbench.cli import CHATTY_LOGGERS

    levels = {name: logging.getLogger(name).level for name in CHATTY_LOGGERS}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


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


@pytest.fixture
def cli(capsys):
    """Run the real CLI entry point in-process; returns (exit code, stdout, stderr)."""
    import sys

    from quantbench.cli import main

    def invoke(*args: str) -> tuple[int, str, str]:
        old = sys.argv
        sys.argv = ["quantbench", *args]
        code = 0
        try:
            main()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            sys.argv = old
        out = capsys.readouterr()
        return code, out.out, out.err

    return invoke
