"""Commands print only what they mean to: no library noise from imports on the terminal."""

from __future__ import annotations

import subprocess
import sys

import pytest

NOISE = ("Failed to load", "_pytree", "kernels-community", "Warning", "warn(", "Traceback")


@pytest.mark.parametrize("args", [
    ["estimate", "smollm2-135m", "-p", "fp16,nf4", "--json"],
    ["recommend", "smollm2-135m", "--vram", "1GiB", "--json"],
])
def test_estimate_and_recommend_print_only_their_answer(args):
    # a fresh interpreter: the noise comes from importing torchao, torch and bitsandbytes
    done = subprocess.run([sys.executable, "-m", "quantbench", *args], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    assert not [n for n in NOISE if n in done.stdout], done.stdout[:500]
    assert done.stdout.lstrip().startswith("{")  # the JSON answer and nothing before it


def test_library_api_can_be_quiet_too():
    """A notebook or script calls quantbench.quiet_libraries() once: loading a model then prints
    nothing (transformers imports torchao/hqq, which log at import, and shows a loading bar)."""
    code = ("import quantbench; quantbench.quiet_libraries(); "
            "loaded = quantbench.load('smollm2-135m', 'fp32'); print(loaded.inspection.parameters)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == "", done.stderr[:500]
    assert done.stdout.strip().isdigit()
