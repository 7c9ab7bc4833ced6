"""Prefill, time to first token, decode ms/token and tokens/s over batch sizes.

The only place in quantbench that times anything. Decode is measured on generated tokens
alone, so prefill never leaks into it: the fast engine's N - 1 steps after the first token are
timed on their own; the eager engine's (model.generate) as (time for N tokens - time for 1
token) / (N - 1).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from quantbench.measure.memory import MemoryProbe
from quantbench.results import sweep_key


@dataclass
class Timing:
    samples_ms: list[float]

    @property
    def median(self) -> float:
        return float(np.median(self.samples_ms))

    @property
    def p10(self) -> float:
        return float(np.percentile(self.samples_ms, 10))

    @property
    def p90(self) -> float:
        return float(np.percentile(self.samples_ms, 90))


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Stopwatch:
    """Wall time between laps, with the device synchronized at each, so queued GPU work counts
    where it was issued."""

    def __init__(self, device: str) -> None:
        self.device = device
        synchronize(device)
        self._last = time.perf_counter()

    def lap(self) -> float:
        """Milliseconds since the previous lap (or since the watch started)."""
        synchronize(self.device)
        now = time.perf_counter()
        elapsed, self._last = (now - self._last) * 1000, now
        return elapsed


def time_ms(fn: Callable[[], Any], device: str, repeats: int, warmup: int) -> Timing:
    """Warm up, then time each call with the device synchronized around it."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        watch = Stopwatch(device)
        fn()
        samples.append(watch.lap())
    return Timing(samples)


def prompt_ids(source_ids: torch.Tensor | None, vocab_size: int, batch: int, length: int) -> torch.Tensor:
    """Real text where we have it (repeated if short); fixed-seed random ids for random weights."""
    if source_ids is None:
        gen = torch.Generator().manual_seed(length * 1000 + batch)
        return torch.randint(0, vocab_size, (batch, length), generator=gen)
    reps = -(-length // len(source_ids))
    row = source_ids.repeat(reps)[:length]
    return row.unsqueeze(0).repeat(batch, 1)


def usable_prompt_lengths(lengths: tuple[int, ...], max_positions: int, new_tokens: int) -> list[int]:
    """Prompt lengths capped so that prompt + generated tokens fit the model's context."""
    cap = max_positions - new_tokens
    return sorted({min(length, cap) for length in lengths if cap > 0})


def measure_prefill(model: Any, ids_for: Callable[[int, int], torch.Tensor], lengths: list[int],
                    device: str, repeats: int, warmup: int) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for length in lengths:
        ids = ids_for(1, length).to(device)

        def forward(ids: torch.Tensor = ids) -> None:
            with torch.no_grad():  # not inference_mode: engine/eager.py says why
                model(ids, use_cache=True)

        timing = time_ms(forward, device, repeats, warmup)
        key = sweep_key("prefill_ms", length)
        metrics[key] = timing.median
        metrics[f"{key}_p10"] = timing.p10
        metrics[f"{key}_p90"] = timing.p90
    return metrics


def _first_and_full(engine: Any, ids: torch.Tensor, new_tokens: int, device: str) -> tuple[float, float]:
    """(ms to the first token, ms for all `new_tokens`) of one repeat: inside one generate call
    where the engine splits its first token off, else a call for one token and one for all."""
    watch = Stopwatch(device)
    if getattr(engine, "splits_first_token", False):
        laps: list[float] = []
        engine.generate(ids, new_tokens, first_token=lambda: laps.append(watch.lap()))
        return laps[0], laps[0] + watch.lap()
    engine.generate(ids, 1)
    first = watch.lap()
    engine.generate(ids, new_tokens)
    return first, watch.lap()


def measure_decode(engine: Any, ids: torch.Tensor, new_tokens: int, device: str,
                   repeats: int, warmup: int) -> dict[str, float]:
    """TTFT and decode ms/token at one batch size; tokens/s counts generated tokens only.

    An engine that `splits_first_token` is timed inside one generate(N): the first token, then
    the N - 1 steps after it, the device synchronized between. Otherwise each repeat times one
    token and then N back to back, and decode is the difference within that repeat: both sides
    see the same state of a busy machine, where subtracting one median from another could even
    go negative."""
    for _ in range(warmup):
        engine.generate(ids, 1)
        engine.generate(ids, new_tokens)
    samples = [_first_and_full(engine, ids, new_tokens, device) for _ in range(repeats)]
    first, full = Timing([o for o, _ in samples]), Timing([f for _, f in samples])
    per_token = [(f - o) / (new_tokens - 1) for o, f in samples]
    batch = ids.shape[0]
    return {
        "ttft_ms": first.median,
        "decode_ms_per_token": float(np.median(per_token)),
        "decode_ms_per_token_p10": float(np.percentile(per_token, 10)),
        "decode_ms_per_token_p90": float(np.percentile(per_token, 90)),
        "tokens_per_s": batch * new_tokens / (full.median / 1000),
    }


def measure_batches(make_engine: Callable[[int], Any], ids_for: Callable[[int, int], torch.Tensor],
                    batch_sizes: tuple[int, ...], prompt_len: int, new_tokens: int, device: str,
                    repeats: int, warmup: int, memory: MemoryProbe,
                    notes: dict[str, Any]) -> dict[str, float | None]:
    """The batch sweep; an out-of-memory batch ends the sweep and is noted, not fatal."""
    metrics: dict[str, float | None] = {}
    for batch in sorted(batch_sizes):
        ids = ids_for(batch, prompt_len).to(device)
        memory.reset_peak()
        try:
            engine = make_engine(batch)
            engine.warmup(ids, new_tokens)
            result = measure_decode(engine, ids, new_tokens, device, repeats, warmup)
        except torch.OutOfMemoryError:
            notes[f"batch_{batch}"] = "out of memory"
            _free(device)
            break
        metrics[sweep_key("tokens_per_s", batch)] = result["tokens_per_s"]
        metrics[sweep_key("decode_ms_per_token", batch)] = result["decode_ms_per_token"]
        metrics[sweep_key("peak_generate_bytes", batch)] = memory.peak_bytes()
        if batch == min(batch_sizes):
            metrics.update(result)
            notes["engine_mode"] = engine.describe()  # e.g. why a decode step was not captured
            notes["decode_timing"] = ("the steps after the first token, timed on their own"
                                      if getattr(engine, "splits_first_token", False)
                                      else "(generate(N) - generate(1)) / (N - 1)")
        elif (mode := engine.describe()) != notes.get("engine_mode"):  # e.g. a batch that did not compile
            notes[f"engine_mode_b{batch}"] = mode
        del engine
        _free(device)
    return metrics


def _free(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
