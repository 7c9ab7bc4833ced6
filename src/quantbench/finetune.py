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

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from quantbench.errors import QuantbenchError
from quantbench.loading import Loaded
from quantbench.optimizers import (
    PeakMemory,
    device_name,
    get_optimizer,
    optimizer_notes,
    optimizer_state_bytes,
    quiet_paged_fallback,
)
from quantbench.results import Result, RunSpec, library_versions, now_iso

DATA_DIR = Path(__file__).parent / "data"
SAMPLE_TEXT = DATA_DIR / "train_sample.txt"
METADATA_FILE = "quantbench_finetune.json"
LOSS_PLOT = "loss_curve.png"
MERGE_DTYPES = ("fp16", "bf16", "fp32")
_LINEAR_CLASSES = ("Linear", "Linear4bit", "Linear8bitLt")


@dataclass(frozen=True)
class FinetuneConfig:
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "auto"  # 'auto': every linear in the blocks
    optimizer: str = "paged_adamw_8bit"
    learning_rate: float = 2e-4
    max_steps: int = 60
    batch_size: int = 1  # per process
    grad_accum: int = 4
    seq_len: int = 256  # tokens per training block; text is packed into blocks
    gradient_checkpointing: bool = True
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    seed: int = 0
    compute_dtype: str | None = None  # None: best for the device
    progress: bool = True


# ---------------------------------------------------------------- data


def read_texts(path: str | Path) -> list[str]:
    """A .txt file is one text; .jsonl lines give 'text', or 'prompt' + 'completion'."""
    path = Path(path)
    if not path.is_file():
        raise QuantbenchError(f"training data '{path}' does not exist")
    raw = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() not in (".jsonl", ".json"):
        return [raw] if raw.strip() else []
    texts = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise QuantbenchError(f"{path}:{number}: not a JSON line") from None
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            texts.append(record["text"])
        elif isinstance(record, dict) and "prompt" in record and "completion" in record:
            texts.append(f"{record['prompt']}{record['completion']}")
        else:
            raise QuantbenchError(
                f"{path}:{number}: expected a 'text' field or 'prompt' and 'completion'"
            )
    return texts


def token_blocks(texts: list[str], tokenizer: Any, seq_len: int) -> list[dict[str, torch.Tensor]]:
    """Pack all texts (each ended by EOS) into blocks of seq_len tokens; labels = inputs."""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    if len(ids) < 2:
        raise QuantbenchError("the training data holds no text")
    # A text shorter than one block still trains, as a single shorter block.
    starts = range(0, max(len(ids) - seq_len + 1, 1), seq_len)
    return [_example(ids[s : s + seq_len]) for s in starts]


def random_blocks(vocab_size: int, seq_len: int, count: int, seed: int) -> list[dict[str, Any]]:
    """Random-weight models have no tokenizer: random ids measure speed and memory only."""
    generator = torch.Generator().manual_seed(seed)
    return [_example(torch.randint(vocab_size, (seq_len,), generator=generator).tolist())
            for _ in range(count)]


def _example(ids: list[int]) -> dict[str, torch.Tensor]:
    tensor = torch.tensor(ids, dtype=torch.long)
    return {"input_ids": tensor, "labels": tensor.clone(), "attention_mask": torch.ones_like(tensor)}


# ---------------------------------------------------------------- model


def find_target_modules(model: torch.nn.Module) -> list[str]:
    """Names (last component) of every linear layer except the output head, in model order."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names: dict[str, None] = {}
    for full_name, module in model.named_modules():
        if type(module).__name__ in _LINEAR_CLASSES and module is not output:
            names[full_name.rsplit(".", 1)[-1]] = None
    if not names:
        raise QuantbenchError("no linear layers found to attach LoRA adapters to")
    return list(names)


def prepare_model(loaded: Any, config: FinetuneConfig) -> tuple[Any, list[str]]:
    """Freeze the base, cast what must train stably to fp32, attach LoRA; (model, targets)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = loaded.model
    checkpointing = {"use_reentrant": False}  # reentrant checkpointing breaks under DDP
    if loaded.precision.quantizes:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs=checkpointing,
        )
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        model.enable_input_require_grads()
    auto = config.target_modules == "auto"
    targets = find_target_modules(model) if auto else list(config.target_modules)
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=targets, task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora), targets
    except ValueError as err:  # e.g. target modules that the model does not have
        raise QuantbenchError(f"cannot attach LoRA: {str(err).splitlines()[0]}") from None


def trainable_parameters(model: Any) -> tuple[int, int]:
    """(trainable, all) with 4-bit weights counted as logical parameters, as peft does."""
    return model.get_nb_trainable_parameters()


# ---------------------------------------------------------------- training


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
    with PeakMemory(loaded.device) as peak, quiet_paged_fallback():
        start = time.perf_counter()
        trainer.train()
        runtime_s = time.perf_counter() - start
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
            peak.metric: max(memory),
            **_parameter_metrics(net, trainer.optimizer),
        },
        info={
            "loss_curve": log.losses, "target_modules": targets, "notes": notes,
            f"{peak.metric}_per_process": memory, "optimizer": choice.name,
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

    def __init__(self) -> None:
        self.losses: list[tuple[int, float]] = []
        self.step_ms: list[float] = []
        self.steps = 0
        self._start = 0.0

    def callback(self) -> Any:
        from transformers import TrainerCallback

        log = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
                log._start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
                log.step_ms.append((time.perf_counter() - log._start) * 1e3)
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
    log = _LossLog()
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


# ---------------------------------------------------------------- outputs


def save_outputs(model: Any, loaded: Any, result: Result, output_dir: str | Path) -> Path:
    """Adapter (safetensors), tokenizer, loss plot, result and what the adapter belongs to."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # DDP wraps the peft model
    model.save_pretrained(out, safe_serialization=True)
    if loaded.tokenizer is not None:
        loaded.tokenizer.save_pretrained(out)
    meta = {
        "model": loaded.model_ref.name, "source": loaded.model_ref.source,
        "precision": loaded.precision.name, "target_modules": result.info["target_modules"],
    }
    (out / METADATA_FILE).write_text(json.dumps(meta, indent=2))
    (out / "result.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    plot_loss_curve(result.info["loss_curve"], out / LOSS_PLOT, title=f"{meta['model']} {meta['precision']}")
    return out


def plot_loss_curve(losses: list[tuple[int, float]], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if losses:
        ax.plot([s for s, _ in losses], [v for _, v in losses], marker=".", linewidth=1)
    ax.set(xlabel="optimizer step", ylabel="training loss", title=f"LoRA fine-tuning {title}".strip())
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def adapter_metadata(adapter_dir: str | Path) -> dict[str, Any]:
    """What `finetune` recorded about the adapter; falls back to peft's adapter_config.json."""
    folder = Path(adapter_dir)
    if not (folder / "adapter_config.json").is_file():
        raise QuantbenchError(f"'{folder}' is not a LoRA adapter folder (no adapter_config.json)")
    if (folder / METADATA_FILE).is_file():
        return json.loads((folder / METADATA_FILE).read_text())
    config = json.loads((folder / "adapter_config.json").read_text())
    return {"model": config.get("base_model_name_or_path"), "precision": None}


def load_with_adapter(adapter_dir: str | Path, precision: str | None = None, **kwargs: Any) -> Any:
    """The adapter's base model in `precision` (default: the one it was trained in), adapter on."""
    from quantbench.loading import load

    meta = adapter_metadata(adapter_dir)
    return load(meta["model"], precision or meta["precision"] or "nf4", adapter=str(adapter_dir), **kwargs)


def merge_adapter(
    adapter_dir: str | Path, output_dir: str | Path, dtype: str = "bf16",
    base: str | None = None, device: str | None = "cpu",
) -> Path:
    """Fold the adapter into an unquantized copy of its base and save a plain model."""
    dtype = dtype.lower()
    if dtype not in MERGE_DTYPES:
        raise QuantbenchError(f"merge dtype must be one of {', '.join(MERGE_DTYPES)}, not '{dtype}'")
    from quantbench.loading import load

    meta = adapter_metadata(adapter_dir)
    model_name = base or meta["model"]
    if not model_name:
        raise QuantbenchError("the adapter does not say its base model; pass --base")
    # Merging into 4-bit weights would round the update away; the base is loaded unquantized.
    loaded = load(model_name, dtype, device=device, adapter=str(adapter_dir))
    merged = loaded.model.merge_and_unload()
    out = Path(output_dir)
    merged.save_pretrained(out, safe_serialization=True)
    if loaded.tokenizer is not None:
        loaded.tokenizer.save_pretrained(out)
    return out
