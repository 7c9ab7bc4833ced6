"""The optimizer comparison: the same model on the same batch for every optimizer and training
mode (full, LoRA, QLoRA), one Result per pair: state bytes, peak memory, step time, tokens/s."""

from __future__ import annotations

import gc
import statistics
from dataclasses import dataclass
from typing import Any

import torch

from quantbench.errors import QuantbenchError
from quantbench.measure.latency import Stopwatch
from quantbench.measure.memory import MemoryProbe, device_name
from quantbench.results import Result, RunSpec, library_versions, now_iso
from quantbench.training.finetune import train_memory_metric
from quantbench.training.lora import FinetuneConfig, prepare_model
from quantbench.training.optimizers import (
    OptimizerChoice,
    build_optimizer,
    get_optimizer,
    optimizer_notes,
    optimizer_state_bytes,
    quiet_paged_fallback,
)

DEFAULT_COMPARISON = ("adamw_torch", "adamw_bnb_8bit", "paged_adamw_8bit")
MODES = ("full", "lora", "qlora")


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
    probe = MemoryProbe(device)
    with probe.watch_peak() as peak, quiet_paged_fallback():
        optimizer = build_optimizer(choice, params, config.learning_rate)
        watch = Stopwatch(device)
        for _ in range(config.steps + 1):
            watch.lap()
            net(input_ids=batch, labels=batch).loss.backward()
            backward_ms = watch.lap()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            opt_ms.append(watch.lap())
            step_ms.append(backward_ms + opt_ms[-1])
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
        train_memory_metric(probe): peak.bytes,
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
