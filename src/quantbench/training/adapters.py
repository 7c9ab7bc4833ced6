"""A trained adapter on disk: what is saved beside it, loading it back, merging it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quantbench.errors import QuantbenchError
from quantbench.results import Result

METADATA_FILE = "quantbench_finetune.json"
LOSS_PLOT = "loss_curve.png"
MERGE_DTYPES = ("fp16", "bf16", "fp32")


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
