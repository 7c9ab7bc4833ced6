"""The model built on the meta device: exact parameter counts, and which linears get quantized.

Tied embeddings count once. Which linears are quantized is decided by transformers' own
bitsandbytes quantizer, run on the meta model: the other backends skip the same modules
(`skip_modules` and the output embedding), so one decision serves every scheme.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from quantbench.errors import QuantbenchError
from quantbench.precisions import DEFAULT_SKIP_MODULES

# KV cache and activation figures need the shape of the decoder block: they are modelled for
# these dense, gated-MLP decoder families only.
KNOWN_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "granite", "olmo2", "gemma")


@dataclass(frozen=True)
class Architecture:
    model_type: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    parameters: int


@dataclass(frozen=True)
class Tensor:
    module: str
    name: str  # parameter or buffer name inside the model
    numel: int
    fixed_dtype: torch.dtype | None  # None: follows the dtype the model is loaded in
    quantized_shape: tuple[int, int] | None  # (in, out) when it is a quantized linear's weight
    parameter: bool  # False for buffers (rotary tables): they take memory but never train


@dataclass
class Skeleton:
    """The meta model and what it is made of; built once per model."""

    arch: Architecture
    tensors: list[Tensor]
    model: Any  # meta-device model, for device-map inference
    lora_shapes: list[tuple[int, int]]  # (in, out) of every linear LoRA targets


def build_skeleton(config: Any, skip_modules: tuple[str, ...] = DEFAULT_SKIP_MODULES) -> Skeleton:
    """Meta-device model from a config: exact parameters and which linears get quantized."""
    from transformers import AutoModelForCausalLM

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    model_type = getattr(text, "model_type", "?")
    if model_type not in KNOWN_MODEL_TYPES:
        raise QuantbenchError(
            f"cannot estimate architecture '{model_type}': its KV cache and activations are not "
            f"modelled; known: {', '.join(KNOWN_MODEL_TYPES)}"
        )
    try:
        # bf16 marks what follows the load dtype; tensors that come out fp32 stay fp32.
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    except (ValueError, KeyError) as err:
        raise QuantbenchError(f"cannot build '{model_type}' as a causal LM: {err}") from None
    quantized = _quantized_linears(model, skip_modules)
    output = model.get_output_embeddings()
    tensors, lora = [], []
    seen: set[int] = set()  # tied weights count once
    for name, module in model.named_modules():
        params = dict(module.named_parameters(recurse=False))
        own = [*params.items(), *module.named_buffers(recurse=False)]
        for local, tensor in own:
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            shape = quantized.get(name) if tensor is getattr(module, "weight", None) else None
            fixed = None if tensor.dtype == torch.bfloat16 else tensor.dtype
            full = f"{name}.{local}" if name else local
            tensors.append(Tensor(name, full, tensor.numel(), fixed, shape, local in params))
        if isinstance(module, torch.nn.Linear) and module is not output:
            lora.append((module.in_features, module.out_features))
    params = sum(p.numel() for p in model.parameters())
    return Skeleton(_architecture(text, model_type, params), tensors, model, lora)


def _architecture(text: Any, model_type: str, parameters: int) -> Architecture:
    heads = text.num_attention_heads
    return Architecture(
        model_type=model_type,
        layers=text.num_hidden_layers,
        hidden=text.hidden_size,
        heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        intermediate=text.intermediate_size,
        vocab=text.vocab_size,
        tied_embeddings=bool(getattr(text, "tie_word_embeddings", False)),
        parameters=parameters,
    )


def _quantized_linears(model: Any, skip_modules: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """Names -> (in, out) of the linears transformers' bitsandbytes quantizer would replace."""
    from transformers import BitsAndBytesConfig
    from transformers.quantizers import AutoHfQuantizer

    probe = copy.deepcopy(model)
    config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(skip_modules) or None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantizer = AutoHfQuantizer.from_config(config)
        quantizer.preprocess_model(probe, device_map={"": "cpu"}, dtype=torch.bfloat16)
    return {
        name: (m.in_features, m.out_features)
        for name, m in probe.named_modules()
        if type(m).__name__ == "Linear8bitLt"
    }


def largest_linear(skeleton: Skeleton) -> tuple[int, int]:
    return max((t.quantized_shape for t in skeleton.tensors if t.quantized_shape), default=(0, 0),
               key=lambda s: s[0] * s[1])
