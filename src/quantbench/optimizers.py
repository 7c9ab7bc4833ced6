"""Optimizers for fine-tuning, and what their state costs: AdamW vs 8-bit vs paged 8-bit.

One table names each optimizer the way transformers' Trainer does (`optim=`), so `finetune`
and the comparison agree. The comparison runs the same model on the same batch for every
optimizer and training mode (full, LoRA, QLoRA) and writes one Result per pair.

Paging (bitsandbytes' Paged* optimizers) puts large state tensors in CUDA unified memory, which
the driver can evict to host RAM under pressure. Two consequences worth knowing when reading
the numbers: paged tensors are not allocated by torch, so `torch.cuda.max_memory_allocated`
does not see them (we count state bytes from the tensors themselves); and bitsandbytes pages
only tensors of 100k elements or more, so LoRA adapters' small states are never paged.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from quantbench.errors import QuantbenchError
from quantbench.results import Result, RunSpec, library_versions, now_iso


@dataclass(frozen=True)
class OptimizerChoice:
    name: str  # also transformers' TrainingArguments.optim value
    summary: str
    state_bits: int
    paged: bool = False
    backend: str = "torch"


_TABLE = [
    OptimizerChoice("adamw_torch", "torch AdamW, two states per weight in its dtype", 32),
    OptimizerChoice(
        "adamw_bnb_8bit", "bitsandbytes AdamW8bit: blockwise 8-bit states", 8,
        backend="bitsandbytes",
    ),
    OptimizerChoice(
        "paged_adamw_8bit", "bitsandbytes PagedAdamW8bit: 8-bit states in CUDA unified memory",
        8, paged=True, backend="bitsandbytes",
    ),
    OptimizerChoice(
        "paged_adamw_32bit", "bitsandbytes PagedAdamW: 32-bit states in CUDA unified memory",
        32, paged=True, backend="bitsandbytes",
    ),
]
OPTIMIZERS: dict[str, OptimizerChoice] = {o.name: o for o in _TABLE}
_ALIASES = {
    "adamw": "adamw_torch",
    "adamw8bit": "adamw_bnb_8bit",
    "adamw_8bit": "adamw_bnb_8bit",
    "paged_adamw8bit": "paged_adamw_8bit",
    "paged_adamw": "paged_adamw_32bit",
}
DEFAULT_COMPARISON = ("adamw_torch", "adamw_bnb_8bit", "paged_adamw_8bit")
MODES = ("full", "lora", "qlora")
CPU_PAGED_NOTE = (
    "paged optimizers need CUDA unified memory; on CPU bitsandbytes {version} falls back to "
    "the non-paged optimizer, so '{name}' runs unpaged here"
)


def get_optimizer(name: str) -> OptimizerChoice:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in OPTIMIZERS:
        raise QuantbenchError(
            f"unknown optimizer '{name}'; choose from: {', '.join(OPTIMIZERS)}"
        )
    return OPTIMIZERS[key]


def optimizer_notes(choice: OptimizerChoice, device: str) -> list[str]:
    """Check the optimizer can run here; return what the user should know about it."""
    if choice.backend != "bitsandbytes":
        return []
    try:
        import bitsandbytes
    except Exception as err:  # missing or broken native library: the user's environment
        raise QuantbenchError(
            f"optimizer '{choice.name}' needs a working bitsandbytes ({type(err).__name__})"
        ) from None
    if choice.paged and not device.startswith("cuda"):
        return [CPU_PAGED_NOTE.format(version=bitsandbytes.__version__, name=choice.name)]
    return []


def build_optimizer(choice: OptimizerChoice, params: list[torch.nn.Parameter], lr: float) -> Any:
    if choice.backend == "torch":
        return torch.optim.AdamW(params, lr=lr)
    import bitsandbytes as bnb

    classes = {
        "adamw_bnb_8bit": bnb.optim.AdamW8bit,
        "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
        "paged_adamw_32bit": bnb.optim.PagedAdamW,
    }
    return classes[choice.name](params, lr=lr)


@contextlib.contextmanager
def quiet_paged_fallback() -> Iterator[None]:
    """bitsandbytes warns at the first CPU step; we report the fallback as a note instead."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU")
        yield


def optimizer_state_bytes(optimizer: Any) -> tuple[int, int]:
    """(all state bytes, paged state bytes) after at least one step; shared tensors count once."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the real one
    seen: set[int] = set()
    total = paged = 0
    for state in optimizer.state.values():
        for tensor in state.values():
            if not isinstance(tensor, torch.Tensor) or tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            size = tensor.numel() * tensor.element_size()
            total += size
            paged += size if getattr(tensor, "is_paged", False) else 0
    return total, paged


class PeakMemory:
    """Peak memory of a region: torch's allocator on CUDA, sampled process RSS on CPU."""

    def __init__(self, device: str, interval_s: float = 0.02) -> None:
        self.device = device
        self.interval_s = interval_s
        self.metric = "peak_train_bytes" if device.startswith("cuda") else "rss_growth_train_bytes"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_rss = self._peak_rss = 0

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return self
        import psutil

        process = psutil.Process()
        self._start_rss = self._peak_rss = process.memory_info().rss

        def sample() -> None:
            while not self._stop.wait(self.interval_s):
                self._peak_rss = max(self._peak_rss, process.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread:
            self._stop.set()
            self._thread.join()

    @property
    def bytes(self) -> int:
        """CUDA: max allocated (all live tensors); CPU: RSS growth over the region."""
        if self.device.startswith("cuda"):
            return torch.cuda.max_memory_allocated()
        return max(0, self._peak_rss - self._start_rss)


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    return f"cpu ({platform.processor() or platform.machine()})"


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@dataclass(frozen=True)
class ComparisonConfig:
    modes: tuple[str, ...] = MODES
    optimizers: tuple[str, ...] = DEFAULT_COMPARISON
    seq_len: int = 256
    batch_size: int = 1
    steps: int = 5  # timed steps, after one warm-up step that also allocates the states
    learning_rate: float = 1e-4
    lora_r: int = 16
    full_precision: str | None = None  # base of 'full' and 'lora'; default: the reference
    gradient_checkpointing: bool = False


def compare_optimizers(
    model: str, config: ComparisonConfig | None = None, device: str | None = None
) -> list[Result]:
    """One Result per (mode, optimizer): state bytes, peak memory, step time, tokens/s."""
    from quantbench.loading import default_device
    from quantbench.precisions import reference_precision

    config = config or ComparisonConfig()
    device = device or default_device()
    choices = [get_optimizer(name) for name in config.optimizers]
    for mode in config.modes:
        if mode not in MODES:
            raise QuantbenchError(f"unknown mode '{mode}'; choose from: {', '.join(MODES)}")
    results = []
    for mode in config.modes:
        precision = "nf4" if mode == "qlora" else config.full_precision or reference_precision(device)
        results += _compare_mode(model, mode, precision, choices, config, device)
    return results


def _compare_mode(
    model: str, mode: str, precision: str, choices: list[OptimizerChoice],
    config: ComparisonConfig, device: str,
) -> list[Result]:
    from quantbench.finetune import FinetuneConfig, prepare_model
    from quantbench.loading import load

    loaded = load(model, precision, device=device)
    ft_config = FinetuneConfig(
        lora_r=config.lora_r, lora_alpha=2 * config.lora_r, lora_dropout=0.0,
        gradient_checkpointing=config.gradient_checkpointing,
    )
    if mode == "full":
        net = loaded.model
        net.requires_grad_(True)
        if config.gradient_checkpointing:
            net.gradient_checkpointing_enable({"use_reentrant": False})
    else:
        net, _ = prepare_model(loaded, ft_config)
    net.train()
    vocab = loaded.model.config.vocab_size
    # The same ids for every mode and optimizer: random tokens are fine for time and memory.
    batch = torch.randint(
        vocab, (config.batch_size, config.seq_len), generator=torch.Generator().manual_seed(0)
    ).to(next(p for p in net.parameters() if p.requires_grad).device)
    results = []
    for choice in choices:
        spec = RunSpec(
            model=loaded.model_ref.name, precision=precision, kind="optimizer",
            workload={
                "mode": mode, "optimizer": choice.name, "seq_len": config.seq_len,
                "batch_size": config.batch_size, "steps": config.steps,
                "lora_r": None if mode == "full" else config.lora_r,
                "gradient_checkpointing": config.gradient_checkpointing,
            },
        )
        result = Result(
            spec=spec, random_weights=loaded.model_ref.random_weights,
            device=device_name(device), versions=library_versions(), timestamp=now_iso(),
        )
        try:
            result.info["notes"] = optimizer_notes(choice, device)
            result.metrics = _measure_steps(net, batch, choice, config, device)
        except torch.OutOfMemoryError as err:
            result.error = f"out of memory: {str(err).splitlines()[0]}"
        except QuantbenchError as err:
            result.error = str(err)
        _release(net, device)
        results.append(result)
    del net, loaded
    _release(None, device)
    return results


def _measure_steps(
    net: Any, batch: torch.Tensor, choice: OptimizerChoice, config: ComparisonConfig, device: str
) -> dict[str, float | int | None]:
    params = [p for p in net.parameters() if p.requires_grad]
    step_ms: list[float] = []
    opt_ms: list[float] = []
    with PeakMemory(device) as peak, quiet_paged_fallback():
        optimizer = build_optimizer(choice, params, config.learning_rate)
        for _ in range(config.steps + 1):
            synchronize(device)
            start = time.perf_counter()
            net(input_ids=batch, labels=batch).loss.backward()
            synchronize(device)
            mid = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            synchronize(device)
            end = time.perf_counter()
            step_ms.append((end - start) * 1e3)
            opt_ms.append((end - mid) * 1e3)
    state, paged = optimizer_state_bytes(optimizer)
    timed, timed_opt = step_ms[1:] or step_ms, opt_ms[1:] or opt_ms
    median_step = statistics.median(timed)
    trainable = sum(p.numel() for p in params)
    metrics: dict[str, float | int | None] = {
        "optimizer_state_bytes": state,
        "paged_state_bytes": paged,
        "optimizer_state_bytes_per_param": round(state / trainable, 4),
        "trainable_parameters": trainable,
        "train_step_ms": round(median_step, 3),
        "train_step_ms_p10": round(_quantile(timed, 0.1), 3),
        "train_step_ms_p90": round(_quantile(timed, 0.9), 3),
        "optimizer_step_ms": round(statistics.median(timed_opt), 3),
        "tokens_per_s": round(batch.numel() / (median_step / 1e3), 2),
        peak.metric: peak.bytes,
    }
    del optimizer
    return metrics


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _release(net: Any, device: str) -> None:
    if net is not None:
        net.zero_grad(set_to_none=True)
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
