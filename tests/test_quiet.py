"""Commands print only what they mean to: no library noise from imports on the terminal."""

from __future__ import annotations

import subprocess
import sys

import pytest

NOISE = ("Failed to load", "_pytree", "kernels-community", "Warning", "warn(", "Traceback")
COMMANDS = {
    "estimate": ["-m", "quantbench", "estimate", "smollm2-135m", "-p", "fp16,nf4", "--json"],
    "recommend": ["-m", "quantbench", "recommend", "smollm2-135m", "--vram", "1GiB", "--json"],
    # a notebook or script calls quantbench.quiet_libraries() once: loading a model then prints
    # nothing (transformers imports torchao/hqq, which log at import, and shows a loading bar)
    "library": ["-c", "import quantbench; quantbench.quiet_libraries(); "
                "loaded = quantbench.load('smollm2-135m', 'fp32'); print(loaded.inspection.parameters)"],
}


@pytest.fixture(scope="module")
def fresh():
    """Each in a fresh interpreter, as the noise comes from importing torchao, torch and
    bitsandbytes; started together, as each mostly imports. name -> (exit code, stdout, stderr)."""
    procs = {name: subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True) for name, args in COMMANDS.items()}
    try:
        outputs = {name: proc.communicate(timeout=300) for name, proc in procs.items()}
        return {name: (procs[name].returncode, *outputs[name]) for name in procs}
    finally:
        for proc in procs.values():
            proc.kill()


@pytest.mark.parametrize("command", ["estimate", "recommend"])
def test_estimate_and_recommend_print_only_their_answer(fresh, command):
    code, out, err = fresh[command]
    assert code == 0, err
    assert err == "", err
    assert not [n for n in NOISE if n in out], out[:500]
    assert out.lstrip().startswith("{")  # the JSON answer and nothing before it


def test_library_api_can_be_quiet_too(fresh):
    """A notebook or script calls quantbench.quiet_libraries() once: loading a model then prints nothing."""
    code, out, err = fresh["library"]
    assert code == 0, err[-2000:]
    assert err == "", err[:500]
    assert out.strip().isdigit()
