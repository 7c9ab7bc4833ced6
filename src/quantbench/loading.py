"""load(model, precision) -> Loaded: the model, its tokenizer and what was quantized."""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from quantbench.errors import QuantbenchError
from quantbench.inspect import Inspection, inspect_model
from quantbench.models import ModelRef, resolve
from quantbench.precisions import (
    LoadOptions,
    Precision,
    get_precision,
    resolve_compute_dtype,
)


@dataclass
class Loaded:
    model: Any
    tokenizer: Any  # None for random-weight architectures: they are fed random token ids
    inspection: Inspection
    precision: Precision
    model_ref: ModelRef
    device: str
    compute_dtype: torch.dtype
    load_seconds: float


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_backend(precision: Precision, device: str) -> None:
    """One clear line when a precision cannot run here, before anything is loaded."""
    if precision.needs_gpu and not device.startswith("cuda"):
        raise QuantbenchError(f"precision '{precision.name}' needs a CUDA GPU; none is visible")
    if precision.backend == "bitsandbytes":
        if importlib.util.find_spec("bitsandbytes") is None:
            raise QuantbenchError(
                f"precision '{precision.name}' needs bitsandbytes: pip install bitsandbytes"
            )
        try:
            import bitsandbytes  # noqa: F401
        except Exception as err:  # a broken native library is a user-environment problem
            raise QuantbenchError(
                f"bitsandbytes cannot run on this device ({type(err).__name__}: {err})"
            ) from None
    elif precision.extra and not _importable(precision.backend):
        raise QuantbenchError(
            f"precision '{precision.name}' needs {precision.backend}: "
            f"pip install 'quantbench[{precision.extra}]'"
        )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # 'optimum.quanto' when 'optimum' itself is missing
        return False


def from_pretrained_kwargs(
    precision: Precision, options: LoadOptions, device: str
) -> tuple[dict[str, Any], torch.dtype]:
    """from_pretrained's keyword arguments and the compute dtype."""
    compute_dtype = resolve_compute_dtype(options.compute_dtype, device)
    scheme = precision.scheme
    kwargs: dict[str, Any] = {
        "dtype": scheme.storage_dtype(compute_dtype),
        "device_map": options.device_map or scheme.device_map(device),
        "trust_remote_code": options.trust_remote_code,
        "use_safetensors": True,
    }
    if options.max_memory:
        kwargs["max_memory"] = options.max_memory
    config = scheme.hf_config(options, compute_dtype)
    if config is not None:
        kwargs["quantization_config"] = config
    return kwargs, compute_dtype


def load(
    model: str | ModelRef,
    precision: str | Precision = "nf4",
    options: LoadOptions | None = None,
    *,
    device: str | None = None,
    adapter: str | None = None,
    **overrides: Any,
) -> Loaded:
    """Load `model` in `precision`; keyword overrides go to LoadOptions (e.g. device_map)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    precision = get_precision(precision) if isinstance(precision, str) else precision
    options = replace(options or LoadOptions(), **overrides)
    device = device or default_device()
    check_backend(precision, device)
    ref = resolve(model) if isinstance(model, str) else model
    options = _keep_tied_head(ref, options)
    kwargs, compute_dtype = from_pretrained_kwargs(precision, options, device)

    source = precision.scheme.prepare_checkpoint(Path(ref.source), options)
    start = time.perf_counter()
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(str(source), **kwargs)
    except torch.OutOfMemoryError:
        raise
    except (OSError, ValueError) as err:
        raise QuantbenchError(f"cannot load '{ref.name}' as {precision.name}: {_one_line(err)}") from None
    precision.scheme.after_load(hf_model, options, compute_dtype)
    if adapter:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise QuantbenchError(f"'{adapter}' is not a LoRA adapter folder (no adapter_config.json)")
        hf_model = PeftModel.from_pretrained(hf_model, adapter)
    hf_model.eval()
    load_seconds = time.perf_counter() - start

    tokenizer = None
    if not ref.random_weights:
        tokenizer = AutoTokenizer.from_pretrained(ref.source, trust_remote_code=options.trust_remote_code)
    return Loaded(
        model=hf_model,
        tokenizer=tokenizer,
        inspection=inspect_model(hf_model, compute_dtype),
        precision=precision,
        model_ref=ref,
        device=device,
        compute_dtype=compute_dtype,
        load_seconds=load_seconds,
    )


def _keep_tied_head(ref: ModelRef, options: LoadOptions) -> LoadOptions:
    """A tied lm_head is the embedding matrix: bitsandbytes cannot quantize it, so it stays."""
    from transformers import AutoConfig

    if "lm_head" in options.skip_modules:
        return options
    config = AutoConfig.from_pretrained(ref.source, trust_remote_code=options.trust_remote_code)
    if getattr(config, "tie_word_embeddings", False):
        return replace(options, skip_modules=(*options.skip_modules, "lm_head"))
    return options


def _one_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
