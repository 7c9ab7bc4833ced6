"""Fine-tuning: the optimizer table (optimizers), LoRA preparation (lora), training data (data),
the QLoRA/LoRA run (finetune), adapters on disk (adapters) and the optimizer comparison
(compare). Each module imports only those before it in that list, never the other way round."""

from __future__ import annotations

from quantbench.training.adapters import (
    LOSS_PLOT,
    MERGE_DTYPES,
    METADATA_FILE,
    adapter_metadata,
    load_with_adapter,
    merge_adapter,
    plot_loss_curve,
    save_outputs,
)
from quantbench.training.compare import DEFAULT_COMPARISON, MODES, ComparisonConfig, compare_optimizers
from quantbench.training.data import SAMPLE_TEXT, random_blocks, read_texts, token_blocks
from quantbench.training.finetune import distributed, finetune, load_for_training, train_memory_metric
from quantbench.training.lora import FinetuneConfig, find_target_modules, prepare_model, trainable_parameters
from quantbench.training.optimizers import (
    OPTIMIZERS,
    OptimizerChoice,
    build_optimizer,
    get_optimizer,
    optimizer_notes,
    optimizer_state_bytes,
    quiet_paged_fallback,
)

__all__ = [
    "DEFAULT_COMPARISON", "LOSS_PLOT", "MERGE_DTYPES", "METADATA_FILE", "MODES", "OPTIMIZERS",
    "SAMPLE_TEXT", "ComparisonConfig", "FinetuneConfig", "OptimizerChoice", "adapter_metadata",
    "build_optimizer", "compare_optimizers", "distributed", "find_target_modules", "finetune",
    "get_optimizer", "load_for_training", "load_with_adapter", "merge_adapter", "optimizer_notes",
    "optimizer_state_bytes", "plot_loss_curve", "prepare_model", "quiet_paged_fallback",
    "random_blocks", "read_texts", "save_outputs", "token_blocks", "train_memory_metric",
    "trainable_parameters",
]
