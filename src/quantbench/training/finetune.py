"""QLoRA: prepare a quantized model, train LoRA adapters with transformers' Trainer, save, merge.

The model is loaded through `quantbench.load`, so it is built exactly as the benchmarks build
it. Training is one `finetune(...)` call that returns a Result (kind 'finetune') with the loss
curve, peak memory, tokens/s and the optimizer's state bytes, and leaves in the output folder:
the adapter (safetensors), the tokenizer, `loss_curve.png`, `result.json` and
`quantbench_finetune.json` (which base model and precision the adapter belongs to).

Under `accelerate launch --num_processes N` the Trainer runs DDP; a quantized model cannot be
moved after loading, so each process loads it straight onto its own GPU (device_map {'': rank}).
"""

from __future__ import annotations

import os
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from quantbench.loading import Loaded
from quantbench.measure.latency import Stopwatch
from quantbench.measure.memory import MemoryProbe, device_name
from quantbench.results import Result, RunSpec, library_versions, now_iso
from quantbench.training.adapters import save_outputs
from quantbench.training.data import SAMPLE_TEXT, random_blocks, read_texts, token_blocks
from quantbench.training.lora import FinetuneConfig, prepare_model, trainable_parameters
from quantbench.training.optimizers import (
    get_optimizer,
    optimizer_notes,
    optimizer_state_bytes,
    quiet_paged_fallback,
)


def train_memory_metric(probe: MemoryProbe) -> str:
    """Peak allocated on CUDA; RSS growth over training on the CPU, named as such."""
    return "peak_train_bytes" if probe.on_cuda else "rss_growth_train_bytes"


def distributed() -> tuple[int, int]:
    """(local rank, world size) as accelerate / torchrun set them; (0, 1) for one process."""
    return int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def load_for_training(model: str, precision: str, config: FinetuneConfig, device: str | None) -> Any:
    from quantbench.loading import default_device, load

    local_rank, world = distributed()
    device = device or default_device()
    overrides: dict[str, Any] = {"compute_dtype": config.compute_dtype}
    if device.startswith("cuda") and world > 1:
        # Quantized weights cannot be moved after loading: each process builds its own copy.
        overrides["device_map"] = {"": local_rank}
        torch.cuda.set_device(local_rank)
    return load(model, precision, device=device, **overrides)


def finetune(
    model: str | Loaded,
    precision: str = "nf4",
    data_path: str | Path | None = None,
    output_dir: str | Path = "adapter",
    config: FinetuneConfig | None = None,
    *,
    device: str | None = None,
) -> Result:
    """Train LoRA adapters on `model` loaded in `precision`; save them to `output_dir`.

    `model` may be a name, or a Loaded from `quantbench.load`, which is then trained in place
    (LoRA layers are injected into `loaded.model`) and `precision` is ignored.
    """
    config = config or FinetuneConfig()
    choice = get_optimizer(config.optimizer)
    texts = read_texts(data_path or SAMPLE_TEXT)  # bad data fails before a slow load
    # A Loaded is trained in place, so the caller keeps a handle on the trained model.
    loaded = model if isinstance(model, Loaded) else load_for_training(model, precision, config, device)
    notes = optimizer_notes(choice, loaded.device)
    if loaded.tokenizer is None:
        notes.append("random weights: trained on random token ids; the loss means nothing")
        blocks = random_blocks(loaded.model.config.vocab_size, config.seq_len, 64, config.seed)
    else:
        blocks = token_blocks(texts, loaded.tokenizer, config.seq_len)
    net, targets = prepare_model(loaded, config)
    trainer, log = _trainer(net, blocks, choice.name, loaded, config, output_dir)
    probe = MemoryProbe(loaded.device)
    metric = train_memory_metric(probe)
    with probe.watch_peak() as peak, quiet_paged_fallback():
        watch = Stopwatch(loaded.device)
        trainer.train()
        runtime_s = watch.lap() / 1e3
    memory = _per_process(peak.bytes)
    spec = RunSpec(
        model=loaded.model_ref.name, precision=loaded.precision.name, kind="finetune",
        options={"compute_dtype": config.compute_dtype} if config.compute_dtype else {},
        workload={**asdict(config), "data": str(data_path or SAMPLE_TEXT), "world_size": distributed()[1]},
        adapter=str(output_dir),
    )
    result = Result(
        spec=spec, random_weights=loaded.model_ref.random_weights,
        device=device_name(loaded.device), versions=library_versions(), timestamp=now_iso(),
        metrics={
            **_training_metrics(log, runtime_s, config, blocks),
            metric: max(memory),
            **_parameter_metrics(net, trainer.optimizer),
        },
        info={
            "loss_curve": log.losses, "target_modules": targets, "notes": notes,
            f"{metric}_per_process": memory, "optimizer": choice.name,
        },
    )
    if trainer.is_world_process_zero():
        save_outputs(trainer.model, loaded, result, output_dir)
    return result


def _training_metrics(
    log: _LossLog, runtime_s: float, config: FinetuneConfig, blocks: list[dict[str, Any]]
) -> dict[str, float | int | None]:
    world = distributed()[1]
    # Blocks are packed to one length, so every step sees the same number of tokens.
    tokens = log.steps * config.batch_size * config.grad_accum * blocks[0]["input_ids"].numel()
    losses = [loss for _, loss in log.losses]
    return {
        "train_loss_first": losses[0] if losses else None,
        "train_loss_last": losses[-1] if losses else None,
        "train_steps": log.steps,
        "train_seconds": round(runtime_s, 3),
        "train_step_ms": round(statistics.median(log.step_ms[1:] or log.step_ms), 3),
        "tokens_per_s": round(tokens * world / runtime_s, 2),
        "tokens_per_s_per_process": round(tokens / runtime_s, 2),
        "training_blocks": len(blocks),
    }


def _parameter_metrics(net: Any, optimizer: Any) -> dict[str, float | int]:
    trainable, total = trainable_parameters(net)
    state_bytes, paged_bytes = optimizer_state_bytes(optimizer)
    return {
        "trainable_parameters": trainable,
        "all_parameters": total,
        "trainable_share": round(trainable / total, 6),
        "optimizer_state_bytes": state_bytes,
        "paged_state_bytes": paged_bytes,
    }


class _LossLog:
    """Collects (step, loss) and per-step wall time from the Trainer's callbacks."""

    def __init__(self, device: str) -> None:
        self.losses: list[tuple[int, float]] = []
        self.step_ms: list[float] = []
        self.steps = 0
        self.device = device
        self._watch: Stopwatch | None = None

    def callback(self) -> Any:
        from transformers import TrainerCallback

        log = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
                log._watch = Stopwatch(log.device)

            def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
                log.step_ms.append(log._watch.lap())
                log.steps = state.global_step

            def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
                if logs and "loss" in logs:
                    log.losses.append((state.global_step, float(logs["loss"])))

        return Callback()


def _trainer(
    net: Any, blocks: list[dict[str, Any]], optim: str, loaded: Any,
    config: FinetuneConfig, output_dir: str | Path,
) -> tuple[Any, _LossLog]:
    from transformers import Trainer, TrainingArguments, default_data_collator

    on_gpu = loaded.device.startswith("cuda")
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_steps,
        optim=optim,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=config.seed,
        use_cpu=not on_gpu,
        bf16=on_gpu and loaded.compute_dtype == torch.bfloat16,
        fp16=on_gpu and loaded.compute_dtype == torch.float16,
        disable_tqdm=not config.progress,
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,  # frozen base weights never get gradients
        dataloader_pin_memory=on_gpu,
    )
    log = _LossLog(loaded.device)
    trainer = Trainer(
        model=net, args=args, train_dataset=blocks, data_collator=default_data_collator,
        callbacks=[log.callback()],
    )
    return trainer, log


def _per_process(value: int) -> list[int]:
    """Every process's value, in rank order (just [value] without DDP)."""
    if distributed()[1] == 1:
        return [value]
    from accelerate.utils import gather_object

    return [int(v) for v in gather_object([value])]
