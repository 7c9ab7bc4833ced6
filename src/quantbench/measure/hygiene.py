"""Was the device shared while we timed it? Timings taken beside other work are flagged.

A GPU is shared when another process holds a context on it (NVML, or nvidia-smi where the
NVML bindings are not installed); a CPU is shared when other processes kept more cores busy than
the ones our threads leave free. Either way the timings are kept, and the Result says why they
may be slow, as optimum-benchmark's device isolation check does.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

SAMPLE_SECONDS = 2.0  # nvidia-smi costs a little CPU; eager decode is launch-bound
# Background daemons keep a sliver of a core busy; more than this beyond the free cores is load.
CPU_MARGIN_CORES = 0.5


def cpu_verdict(other_cores: float, cores: int, threads: int) -> str | None:
    """Why the CPU counts as shared, or None: others used more than the cores we leave idle."""
    free = max(cores - threads, 0)
    if other_cores > free + CPU_MARGIN_CORES:
        return (f"other processes kept {other_cores:.1f} of {cores} CPU cores busy "
                f"while {threads} thread(s) measured")
    return None


def gpu_verdict(pids: set[int], own_pid: int) -> str | None:
    """Why the GPU counts as shared, or None. In a container NVML may list our process under a
    host pid that is not ours: then one entry is taken to be us."""
    others = pids - {own_pid} if own_pid in pids else set(sorted(pids)[1:])
    if others:
        return f"{len(others)} other process(es) on the GPU (pid {', '.join(map(str, sorted(others)))})"
    return None


def gpu_processes(device_index: int) -> set[int] | None:
    """Pids with a compute context on the GPU torch calls `device_index`; None when unknown."""
    import torch

    uuid = str(getattr(torch.cuda.get_device_properties(device_index), "uuid", "") or "")
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = (pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}") if uuid
                  else pynvml.nvmlDeviceGetHandleByIndex(device_index))
        return {p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)}
    except ImportError:
        pass
    except Exception:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=gpu_uuid,pid", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [line.split(",") for line in out.splitlines() if "," in line]
    return {int(pid) for gpu, pid in rows if not uuid or uuid in gpu}


@dataclass
class DeviceWatch:
    """`with DeviceWatch(device) as watch:` around timed work; then `watch.shared`."""

    device: str
    shared: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    _pids: set[int] | None = field(default_factory=set)  # None: NVML could not say
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> DeviceWatch:
        self._own = psutil.Process()
        self._start = (time.perf_counter(), self._busy_seconds(), self._own_seconds())
        if self.device.startswith("cuda"):
            self._thread = threading.Thread(target=self._sample_gpu, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        wall, busy, own = (now - then for now, then in zip(
            (time.perf_counter(), self._busy_seconds(), self._own_seconds()), self._start, strict=True))
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            reasons = [gpu_verdict(self._pids, os.getpid())] if self._pids is not None else []
            self.details["gpu_processes"] = sorted(self._pids) if self._pids is not None else "unknown"
        else:
            import torch

            threads, cores = torch.get_num_threads(), psutil.cpu_count() or 1
            other = max(busy - own, 0.0) / wall if wall > 0 else 0.0
            reasons = [cpu_verdict(other, cores, threads)]
            self.details |= {"other_busy_cores": round(other, 2), "cores": cores, "threads": threads}
        self.shared = "; ".join(r for r in reasons if r) or None

    def _sample_gpu(self) -> None:
        import torch

        index = torch.cuda.current_device()
        while True:
            found = gpu_processes(index)
            self._pids = None if found is None or self._pids is None else self._pids | found
            if self._stop.wait(SAMPLE_SECONDS):
                break
        found = gpu_processes(index)  # once more at the end, for work shorter than a sample
        self._pids = None if found is None or self._pids is None else self._pids | found

    @staticmethod
    def _busy_seconds() -> float:
        """CPU seconds all cores spent busy (guest time is already inside user time)."""
        times = psutil.cpu_times()
        return sum(getattr(times, name, 0.0) for name in
                   ("user", "nice", "system", "irq", "softirq", "steal"))

    def _own_seconds(self) -> float:
        times = self._own.cpu_times()
        return times.user + times.system
