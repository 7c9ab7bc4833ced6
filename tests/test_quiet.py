"""Commands print only what they mean to: no library noise from imports on the terminal."""

from __future__ import annotations

import subprocess
import sys

NOISE = ("Failed to load", "_pytree", "kernels-community", "Warning", "warn(", "Traceback")
COMMANDS = [
    ["estimate", "smollm2-135m", "-p", "fp16,nf4", "--json"],
    ["recommend", "smollm2-135m", "--vram", "1GiB", "--json"],
]


def test_estimate_and_recommend_print_only_their_answer():
    # a fresh interpreter each: the noise comes from importing torchao, torch and bitsandbytes;
    # started together, as they mostly wait on imports
    procs = [subprocess.Popen([sys.executable, "-m", "quantbench", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for args in COMMANDS]
    try:
        done = [(args, *proc.communicate(timeout=300), proc.returncode)
                for args, proc in zip(COMMANDS, procs, strict=True)]
    finally:
        for proc in procs:
            proc.kill()
    for args, out, err, code in done:
        assert code == 0, (args, err)
        assert err == "", (args, err)
        assert not [n for n in NOISE if n in out], (args, out[:500])
        assert out.lstrip().startswith("{"), args  # the JSON answer and nothing before it
