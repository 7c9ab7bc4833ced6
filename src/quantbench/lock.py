"""One sweep per results file at a time: a second one is refused with one line.

An advisory flock on a side file (`results.jsonl.lock`): the kernel drops it when the process
dies, however it dies, so a killed sweep never leaves a stale lock behind. The side file stays;
removing it would let two sweeps lock two different files of the same name.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from quantbench.errors import QuantbenchError


def lock_path(results_path: str | Path) -> Path:
    path = Path(results_path)
    return path.with_name(path.name + ".lock")


@contextmanager
def results_lock(results_path: str | Path) -> Iterator[None]:
    """Hold the results file for this process until the block ends."""
    path = lock_path(results_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise QuantbenchError(
                f"'{results_path}' is being written by another quantbench run ({holder}); "
                "wait for it to finish or pass another --results file"
            ) from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
