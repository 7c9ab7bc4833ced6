"""Device memory: the CUDA allocator's counters on GPU, process RSS on CPU (labelled as such)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import psutil
import torch


@dataclass
class MemoryProbe:
    """Reads allocated and peak bytes of one device; resettable between phases."""

    device: str

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def source(self) -> str:
        return "cuda allocator" if self.on_cuda else "process RSS (CPU)"

    def reset_peak(self) -> None:
        if self.on_cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def allocated_bytes(self) -> int:
        if self.on_cuda:
            return torch.cuda.memory_allocated()
        return psutil.Process().memory_info().rss

    def peak_bytes(self) -> int | None:
        """Peak since the last reset; the CPU has no resettable peak, so None there."""
        if self.on_cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return None

    def reserved_bytes(self) -> int | None:
        return torch.cuda.memory_reserved() if self.on_cuda else None

    @contextlib.contextmanager
    def watch_peak(self, interval_s: float = 0.02) -> Iterator[Peak]:
        """Peak over a region: the allocator's max on CUDA (all live tensors), the growth of
        RSS sampled every interval_s on the CPU; read `.bytes` after the region."""
        peak = Peak()
        if self.on_cuda:
            self.reset_peak()
            try:
                yield peak
            finally:
                peak.bytes = self.peak_bytes() or 0
            return
        start = highest = self.allocated_bytes()
        stop = threading.Event()

        def sample() -> None:
            nonlocal highest
            while not stop.wait(interval_s):
                highest = max(highest, self.allocated_bytes())

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield peak
        finally:
            stop.set()
            thread.join()
            highest = max(highest, self.allocated_bytes())
            peak.bytes = max(0, highest - start)

    def per_device_allocated(self) -> dict[str, int]:
        """Allocated bytes on every visible GPU, for models placed across several."""
        if not self.on_cuda:
            return {}
        return {f"cuda:{i}": torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count())}


@dataclass
class Peak:
    bytes: int = 0


def device_name(device: str) -> str:
    """The one label every Result carries for the device it was measured on."""
    if device.startswith("cuda") and torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return names[0] if len(set(names)) == 1 and len(names) == 1 else f"{len(names)}x {names[0]}"
    import platform

    return f"cpu ({platform.machine()}, {psutil.cpu_count(logical=True)} threads)"


MIN_BANDWIDTH_PROBE_BYTES = 64 << 20  # smaller copies time launch latency, not bandwidth


def copy_bandwidth_bytes_per_s(device: str, size_bytes: int = 1 << 30, repeats: int = 20) -> float | None:
    """Measured device-to-device copy rate, counting bytes read plus bytes written; None when
    the device has too little memory free to measure it.

    The median of event-timed copies, so one slow copy (a clock ramp, a neighbour) does not count.
    The two buffers take at most half of the free memory: the probe is an aside to a precision's
    measurement and must never turn a model that fits into an out-of-memory result.
    """
    if not device.startswith("cuda"):
        return None
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    size_bytes = min(size_bytes, free // 4)
    if size_bytes < MIN_BANDWIDTH_PROBE_BYTES:
        return None
    try:
        src = torch.randint(0, 255, (size_bytes,), dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None
    for _ in range(3):
        dst.copy_(src)
    seconds = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        seconds.append(start.elapsed_time(end) / 1000)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * size_bytes / float(np.median(seconds))
