"""The adapter to llm-compressor: calibrate a model with GPTQ or AWQ and save it compressed.

llm-compressor's `oneshot` runs the calibration samples through the model one decoder layer at a
time (its sequential pipeline), quantizes each targeted linear and saves a compressed-tensors
checkpoint ("pack-quantized": eight 4-bit values per int32, scales, zero points for AWQ).
"""

from __future__ import annotations

import contextlib
import json
import resource
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from quantbench.calibration.groups import plan_groups
from quantbench.calibration.scheme import METADATA_FILE, METHODS, Calibrated
from quantbench.errors import QuantbenchError

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _import_llmcompressor() -> None:
    try:
        import llmcompressor  # noqa: F401
    except ImportError:
        raise QuantbenchError(
            "calibrated precisions need llm-compressor: pip install 'quantbench[calibration]'"
        ) from None


@contextlib.contextmanager
def _cpu_only_pipeline() -> Iterator[None]:
    """AWQ's grid search pins cached activations for faster host-to-GPU copies; with no
    accelerator, pin_memory raises, so pinning is skipped for the duration of a CPU run."""
    if torch.accelerator.is_available():
        yield
        return
    from llmcompressor.pipelines.cache import IntermediatesCache

    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original


def _modifier(scheme: Calibrated, plan: dict[int, list[str]]) -> Any:
    from compressed_tensors.quantization import preset_name_to_scheme

    groups = {}
    for size, names in plan.items():
        config = preset_name_to_scheme(METHODS[scheme.method], names)
        config.weights.num_bits = scheme.bits
        config.weights.group_size = size
        groups[f"group_{size}"] = config
    if scheme.method == "gptq":
        from llmcompressor.modifiers.gptq import GPTQModifier

        return GPTQModifier(config_groups=groups)
    from llmcompressor.modifiers.awq import AWQModifier

    return AWQModifier(config_groups=groups)


def _stand_in_processor() -> Any:
    """A random-weights folder has no tokenizer, and `oneshot` insists on a processor once a
    dataset is given; the samples are token ids already, so an empty word-level one will do."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>")), unk_token="<unk>", pad_token="<unk>"
    )


def calibrate(scheme: Calibrated, model_dir: Path, out: Path, tokenizer: Any, samples: list[list[int]],
              source: str, options: Any, dtype: str, key: dict[str, Any]) -> None:
    """Calibrate `model_dir` with `scheme` on token `samples`; write the compressed checkpoint to `out`."""
    _import_llmcompressor()
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM
    from transformers.quantizers.quantizers_utils import should_convert_module

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=DTYPES[dtype], trust_remote_code=options.trust_remote_code, use_safetensors=True
    )
    skip = list(options.skip_modules) or None
    linears = [(n, m.in_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    plan, left = plan_groups(linears, scheme.group, [n for n, _ in linears if not should_convert_module(n, skip)])
    if not plan:
        raise QuantbenchError(f"no linear layer of '{model_dir}' can be quantized in groups of {scheme.group}")
    dataset = Dataset.from_dict({"input_ids": samples, "attention_mask": [[1] * len(s) for s in samples]})

    on_cuda = torch.cuda.is_available()
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with _cpu_only_pipeline():
        oneshot(model=model, dataset=dataset, recipe=_modifier(scheme, plan),
                processor=tokenizer if tokenizer is not None else _stand_in_processor(),
                max_seq_length=options.calibration_seq_len, num_calibration_samples=len(samples))
    seconds = time.perf_counter() - start
    peak = {"calibration_peak_bytes": torch.cuda.max_memory_allocated()} if on_cuda else {
        # the process's peak resident set since it started (Linux reports KiB)
        "calibration_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    }
    model.save_pretrained(out, save_compressed=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    meta = {
        "calibration_seconds": round(seconds, 2),
        **peak,
        "calibration_samples": len(samples),
        "calibration_seq_len": options.calibration_seq_len,
        "calibration_text": source,
        "group_sizes": {str(size): len(names) for size, names in plan.items()},
        "unquantized_linears": left,
        "key": key,
        "versions": {name: metadata.version(name) for name in ("llmcompressor", "compressed-tensors",
                                                                "transformers", "torch")},
    }
    (out / METADATA_FILE).write_text(json.dumps(meta, indent=2))
    del model
    if on_cuda:  # the load that follows measures its own peak, not calibration's
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
