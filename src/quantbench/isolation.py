"""Run one function in a fresh Python process: nothing it allocates, leaks or crashes on can
touch the caller or the next call. The runner's workers and the benchmark scripts use it.

The function is named as "package.module:function" or "path/to/script.py:function"; it takes
one JSON-able argument (none when the argument is None) and returns a JSON-able value.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

_MARK = "quantbench-isolated-result:"


@dataclass(frozen=True)
class Outcome:
    value: Any = None
    error: str | None = None  # the child's last stderr line, its exit code, or the timeout

    @property
    def ok(self) -> bool:
        return self.error is None


def run_isolated(target: str, argument: Any = None, *, timeout_s: float | None = None) -> Outcome:
    """Call `target(argument)` in its own process and return what it returned."""
    payload = json.dumps({"target": target, "argument": argument})
    cmd = [sys.executable, "-c", "from quantbench.isolation import child_main; child_main()"]
    try:
        proc = subprocess.run(cmd, input=payload, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return Outcome(error=f"timed out after {timeout_s:g} s")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_MARK):
            return Outcome(value=json.loads(line[len(_MARK):]))
    tail = proc.stderr.strip().splitlines()
    return Outcome(error=tail[-1] if tail else f"exit code {proc.returncode}")


def resolve(target: str) -> Any:
    where, _, name = target.rpartition(":")
    if where.endswith(".py"):
        spec = importlib.util.spec_from_file_location("_isolated_target", where)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, name)


def child_main() -> None:
    request = json.loads(sys.stdin.read())
    function, argument = resolve(request["target"]), request["argument"]
    value = function() if argument is None else function(argument)
    sys.stdout.write(_MARK + json.dumps(value, default=str) + "\n")
    sys.stdout.flush()
