"""Memory from the config alone: weights, KV cache, activations, training, GPU fit and split.

The model is built on the meta device, so parameter counts are exact and tied embeddings count
once. Which linears get quantized is decided by transformers' own bitsandbytes quantizer, run on
that meta model, so the estimate quantizes exactly what `quantbench.load` quantizes. Byte counts
follow bitsandbytes' storage layout (packed weights, absmax, nested absmax, code, SCB).

KV cache and activation figures need the shape of the decoder block, so they are given only for
the dense, gated-MLP decoder families listed in KNOWN_MODEL_TYPES; others get a clear error.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from quantbench.errors import QuantbenchError
from quantbench.precisions import (
    DEFAULT_SKIP_MODULES,
    DQ_BLOCKSIZE,
    DTYPES,
    NF4_BLOCKSIZE,
    PRECISIONS,
    LoadOptions,
    Precision,
    get_precision,
)

MIB, GIB = 2**20, 2**30
# Driver context, cuBLAS/cuDNN handles and loaded kernels: memory that torch's allocator never
# reports. Measured on H100 + CUDA 12 with lazy module loading at 450-550 MiB.
CUDA_CONTEXT_BYTES = 512 * MIB
KNOWN_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "granite", "olmo2", "gemma")
# Total memory as nvidia-smi reports it (what the driver can hand out, before the context).
GPUS: dict[str, int] = {
    "T4 16GB": 15360 * MIB,
    "L4 24GB": 23034 * MIB,
    "RTX 4090 24GB": 24564 * MIB,
    "A100 40GB": 40960 * MIB,
    "A100 80GB": 81920 * MIB,
    "H100 80GB": 81559 * MIB,
    "H200 141GB": 143771 * MIB,
}
TRAIN_MODES = ("full", "lora", "qlora")
# bitsandbytes constants: 4-bit code table per linear, 8-bit dynamic map shared by all; 8-bit
# optimizers keep 32-bit states below min_8bit_size and page only tensors of 1e5+ elements.
FOUR_BIT_CODE_BYTES = 16 * 4
DYNAMIC_MAP_BYTES = 256 * 4
OPTIMIZER_BLOCKSIZE = 256
MIN_8BIT_SIZE = 4096
PAGED_MIN_NUMEL = 100_000
DEFAULT_MIXED = ("fp16", "int8", "nf4", "nf4-dq", "fp4")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """'8GiB' / '8GB' / '8000MiB' -> bytes (GB = 10^9, GiB = 2^30)."""
    match = _SIZE.match(str(text))
    if not match:
        raise QuantbenchError(f"bad size '{text}'; expected e.g. 8GiB, 8GB or 8000MiB")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if value <= 0:
        raise QuantbenchError(f"size must be positive, got '{text}'")
    return int(value)


def gib(n: int | float) -> str:
    return f"{n / GIB:.2f} GiB"


@dataclass(frozen=True)
class EstimateSettings:
    batch_size: int = 1
    seq_len: int = 2048  # tokens in the KV cache: prompt plus generated
    device: str = "cuda"
    compute_dtype: str | None = None  # None: bf16 on CUDA, fp32 on CPU, as load() picks
    skip_modules: tuple[str, ...] = DEFAULT_SKIP_MODULES
    train: str | None = None  # full | lora | qlora
    optimizer: str = "adamw"
    lora_r: int = 16
    gradient_checkpointing: bool = False
    gpus: int = 1
    gpu_memory_bytes: int | None = None  # per-GPU cap for the split; None: balanced, no cap
    context_bytes: int | None = None  # None: CUDA_CONTEXT_BYTES on CUDA, 0 on CPU
    trust_remote_code: bool = False


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
class _Tensor:
    module: str
    numel: int
    fixed_dtype: torch.dtype | None  # None: follows the dtype the model is loaded in
    quantized_shape: tuple[int, int] | None  # (in, out) when bitsandbytes would quantize it
    parameter: bool  # False for buffers (rotary tables): they take memory but never train


@dataclass
class Skeleton:
    """The meta model and what it is made of; built once per model."""

    arch: Architecture
    tensors: list[_Tensor]
    model: Any  # meta-device model, for device-map inference
    lora_shapes: list[tuple[int, int]]  # (in, out) of every linear LoRA targets


@dataclass
class TrainingEstimate:
    mode: str
    optimizer: str
    trainable_parameters: int
    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    paged_optimizer_bytes: int  # part of optimizer_bytes that may spill to host RAM
    lora_bytes: int
    activations_bytes: int
    activations_checkpointed_bytes: int
    gradient_checkpointing: bool
    peak_bytes: int  # weights + grads + states + activations of the chosen checkpointing


@dataclass
class GpuShare:
    device: str
    weights_bytes: int
    modules: list[str]


@dataclass
class PrecisionEstimate:
    precision: str
    parameters: int
    quantized_parameters: int
    full_precision_parameters: int
    quantized_linears: int
    weights_bytes: int  # everything loading allocates, constants included
    quant_constants_bytes: int
    kv_cache_bytes: int
    activations_bytes: int
    context_bytes: int
    peak_inference_bytes: int  # weights + KV + activations: comparable to max_memory_allocated
    inference_total_bytes: int  # + context: what the GPU must hold
    training: TrainingEstimate | None = None
    training_note: str | None = None
    gpu_split: list[GpuShare] = field(default_factory=list)
    per_gpu_inference_bytes: int | None = None
    fits: dict[str, dict[str, int | None]] = field(default_factory=dict)  # gpu -> headroom


@dataclass
class Estimate:
    model: str
    architecture: Architecture
    settings: EstimateSettings
    compute_dtype: str
    precisions: list[PrecisionEstimate]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


# ---------------------------------------------------------------- architecture


def build_skeleton(config: Any, skip_modules: tuple[str, ...] = DEFAULT_SKIP_MODULES) -> Skeleton:
    """Meta-device model from a config: exact parameters and what bitsandbytes would quantize."""
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
        params = list(module.parameters(recurse=False))
        for tensor in [*params, *module.buffers(recurse=False)]:
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            shape = quantized.get(name) if tensor is getattr(module, "weight", None) else None
            fixed = None if tensor.dtype == torch.bfloat16 else tensor.dtype
            tensors.append(_Tensor(name, tensor.numel(), fixed, shape,
                                    any(tensor is q for q in params)))
        if isinstance(module, torch.nn.Linear) and module is not output:
            lora.append((module.in_features, module.out_features))
    params = sum(p.numel() for p in model.parameters())
    arch = _architecture(text, model_type, params)
    return Skeleton(arch, tensors, model, lora)


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


def _bnb_quantizer(config: Any) -> Any:
    from transformers.quantizers import AutoHfQuantizer

    return AutoHfQuantizer.from_config(config)


def _quantized_linears(model: Any, skip_modules: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """Names -> (in, out) of the linears transformers' bitsandbytes quantizer would replace."""
    from transformers import BitsAndBytesConfig

    probe = copy.deepcopy(model)
    config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(skip_modules) or None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _bnb_quantizer(config).preprocess_model(probe, device_map={"": "cpu"}, dtype=torch.bfloat16)
    return {
        name: (m.in_features, m.out_features)
        for name, m in probe.named_modules()
        if type(m).__name__ == "Linear8bitLt"
    }


# ---------------------------------------------------------------- weights


def _quantized_bytes(qconfig: Any, shape: tuple[int, int]) -> tuple[int, int]:
    """(packed weight bytes, constant bytes) of one linear, as bitsandbytes stores it."""
    n = shape[0] * shape[1]
    if qconfig.load_in_8bit:
        return n, 4 * shape[1]  # int8 weight, one fp32 scale (SCB) per output row
    blocks = math.ceil(n / NF4_BLOCKSIZE)
    # double quantization: uint8 absmax, an fp32 absmax per 256 of them, an fp32 offset
    nested = blocks + 4 * math.ceil(blocks / DQ_BLOCKSIZE) + 4
    constants = nested if qconfig.bnb_4bit_use_double_quant else 4 * blocks
    return math.ceil(n / 2), constants + FOUR_BIT_CODE_BYTES


def weights(skeleton: Skeleton, precision: Precision, compute_dtype: torch.dtype,
            skip_modules: tuple[str, ...] = DEFAULT_SKIP_MODULES) -> dict[str, int]:
    """Parameter split and bytes of the loaded model, constants included."""
    qconfig = precision.quantization_config(LoadOptions(skip_modules=skip_modules), compute_dtype)
    dtype = precision.unquantized_dtype(compute_dtype)
    out = dict(quantized_parameters=0, full_precision_parameters=0, quantized_linears=0,
               weights_bytes=0, quant_constants_bytes=0)
    for t in skeleton.tensors:
        if qconfig is not None and t.quantized_shape is not None:
            packed, constants = _quantized_bytes(qconfig, t.quantized_shape)
            out["quantized_parameters"] += t.numel
            out["quantized_linears"] += 1
            out["weights_bytes"] += packed + constants
            out["quant_constants_bytes"] += constants
        else:
            out["full_precision_parameters"] += t.numel
            out["weights_bytes"] += t.numel * (t.fixed_dtype or dtype).itemsize
    if qconfig is not None and getattr(qconfig, "bnb_4bit_use_double_quant", False):
        out["weights_bytes"] += DYNAMIC_MAP_BYTES  # one shared map for the nested absmax
        out["quant_constants_bytes"] += DYNAMIC_MAP_BYTES
    # buffers (rotary tables) are not parameters
    out["full_precision_parameters"] = skeleton.arch.parameters - out["quantized_parameters"]
    return out


def largest_linear(skeleton: Skeleton) -> tuple[int, int]:
    return max((t.quantized_shape for t in skeleton.tensors if t.quantized_shape), default=(0, 0),
               key=lambda s: s[0] * s[1])


# ---------------------------------------------------------------- inference


def kv_cache_bytes(arch: Architecture, batch: int, seq_len: int, act_bytes: int) -> int:
    """Keys and values of every layer, stored in the activation dtype."""
    return 2 * arch.layers * batch * seq_len * arch.kv_heads * arch.head_dim * act_bytes


def inference_activation_bytes(arch: Architecture, batch: int, seq_len: int, act_bytes: int,
                               qconfig: Any, big: tuple[int, int]) -> int:
    """Transient peak of one prefill layer; attention is fused (SDPA), so no seq^2 matrix."""
    tokens = batch * seq_len
    kv_dim = arch.kv_heads * arch.head_dim
    # residual + normed hidden, q/k/v, then the MLP's gate, up and their product at once
    per_token = (2 * arch.hidden + arch.hidden + 2 * kv_dim + 3 * arch.intermediate) * act_bytes
    logits = batch * arch.vocab * 4 * 2  # generate keeps only the last position, in fp32
    extra = 0
    if qconfig is not None and qconfig.load_in_8bit:
        extra = tokens * (big[0] + 4 * big[1])  # int8 copy of the input, int32 output
    elif qconfig is not None:
        extra = big[0] * big[1] * act_bytes  # 4-bit weight dequantized for the prefill matmul
    return tokens * per_token + logits + extra


# ---------------------------------------------------------------- training


def _optimizer_bytes(choice: Any, tensors: list[tuple[int, int]]) -> tuple[int, int]:
    """(state bytes, paged part) for (numel, bytes per element) trainable tensors."""
    total = paged = 0
    for numel, itemsize in tensors:
        if choice.backend == "torch":
            size = 2 * numel * itemsize  # exp_avg, exp_avg_sq in the parameter's dtype
        elif choice.state_bits == 32 or numel < MIN_8BIT_SIZE:
            size = 2 * numel * 4
        else:
            size = 2 * numel + 2 * 4 * math.ceil(numel / OPTIMIZER_BLOCKSIZE)
        total += size
        if choice.paged and numel >= PAGED_MIN_NUMEL:
            paged += size
    if choice.backend != "torch" and choice.state_bits == 8:
        total += 2 * DYNAMIC_MAP_BYTES  # signed and unsigned quantile maps, shared
    return total, paged


def training_activation_bytes(arch: Architecture, tokens: int, act_bytes: int,
                              lora: list[tuple[int, int]], r: int) -> tuple[int, int]:
    """(without, with gradient checkpointing): what autograd keeps for the backward pass."""
    h, kv, i = arch.hidden, arch.kv_heads * arch.head_dim, arch.intermediate
    norms = 2 * (8 + act_bytes) * h  # RMSNorm saves its fp32 upcast and normalised output
    attention = act_bytes * (5 * h + 4 * kv)  # projection input, roped q/k, SDPA q/k/v/out
    mlp = act_bytes * (h + 4 * i)  # input, gate, silu(gate), up, product
    # LoRA: dropout output + mask per adapted linear, and lora_A's output
    adapters = sum((act_bytes + 1) * n_in + act_bytes * r for n_in, _ in lora) // arch.layers
    per_layer = tokens * (norms + attention + mlp + adapters)
    logits = tokens * arch.vocab * (act_bytes + 4 + 4)  # logits, fp32 upcast, its gradient
    full = arch.layers * per_layer + logits
    checkpointed = arch.layers * tokens * h * act_bytes + per_layer + logits
    return full, checkpointed


def _training_mode_note(mode: str, precision: Precision) -> str | None:
    if mode == "full" and precision.quantizes:
        return "full fine-tuning needs float weights; quantized bases train with qlora"
    if mode == "lora" and precision.quantizes:
        return "a quantized base trains with qlora, not lora"
    if mode == "qlora" and not precision.quantizes:
        return "qlora needs a quantized precision; a float base trains with lora"
    return None


def training(skeleton: Skeleton, precision: Precision, compute_dtype: torch.dtype,
             settings: EstimateSettings) -> tuple[TrainingEstimate | None, str | None]:
    from quantbench.optimizers import get_optimizer

    mode = settings.train or "full"
    if note := _training_mode_note(mode, precision):
        return None, note
    choice = get_optimizer(settings.optimizer)
    dtype = precision.unquantized_dtype(compute_dtype)
    act = dtype.itemsize
    if mode == "full":
        trainable = [(t.numel, (t.fixed_dtype or dtype).itemsize)
                     for t in skeleton.tensors if t.parameter]
        base = weights(skeleton, precision, compute_dtype, settings.skip_modules)["weights_bytes"]
        lora_shapes: list[tuple[int, int]] = []
    else:
        lora_shapes = skeleton.lora_shapes
        trainable = [(settings.lora_r * n, 4) for shape in lora_shapes for n in shape]
        # peft's prepare_model_for_kbit_training upcasts every non-quantized weight to fp32
        upcast = torch.float32 if mode == "qlora" else compute_dtype
        base = weights(skeleton, precision, upcast, settings.skip_modules)["weights_bytes"]
    grads = sum(n * b for n, b in trainable)
    states, paged = _optimizer_bytes(choice, trainable)
    tokens = settings.batch_size * settings.seq_len
    acts, acts_ckpt = training_activation_bytes(skeleton.arch, tokens, act, lora_shapes,
                                                settings.lora_r)
    if mode == "qlora":  # the frozen 4-bit/8-bit weight is dequantized again for the backward
        big = largest_linear(skeleton)
        acts, acts_ckpt = acts + big[0] * big[1] * act, acts_ckpt + big[0] * big[1] * act
    chosen = acts_ckpt if settings.gradient_checkpointing else acts
    return TrainingEstimate(
        mode=mode, optimizer=choice.name, trainable_parameters=sum(n for n, _ in trainable),
        weights_bytes=base, gradients_bytes=grads, optimizer_bytes=states,
        paged_optimizer_bytes=paged, lora_bytes=grads if mode != "full" else 0,
        activations_bytes=acts, activations_checkpointed_bytes=acts_ckpt,
        gradient_checkpointing=settings.gradient_checkpointing,
        peak_bytes=base + grads + states + chosen,
    ), None



# ---------------------------------------------------------------- placement and fit


def _module_bytes(skeleton: Skeleton, precision: Precision, compute_dtype: torch.dtype,
                  skip_modules: tuple[str, ...]) -> dict[str, int]:
    qconfig = precision.quantization_config(LoadOptions(skip_modules=skip_modules), compute_dtype)
    dtype = precision.unquantized_dtype(compute_dtype)
    sizes: dict[str, int] = {}
    for t in skeleton.tensors:
        if qconfig is not None and t.quantized_shape is not None:
            size = sum(_quantized_bytes(qconfig, t.quantized_shape))
        else:
            size = t.numel * (t.fixed_dtype or dtype).itemsize
        sizes[t.module] = sizes.get(t.module, 0) + size
    return sizes


class _Quiet:
    """accelerate warns about every GPU index this machine does not have: expected here."""

    def __enter__(self) -> None:
        self._levels = {n: logging.getLogger(n).level for n in ("accelerate", "transformers")}
        for name in self._levels:
            logging.getLogger(name).setLevel(logging.ERROR)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc: object) -> None:
        self._warnings.__exit__(*exc)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)


def gpu_split(skeleton: Skeleton, precision: Precision, compute_dtype: torch.dtype,
              settings: EstimateSettings) -> list[GpuShare]:
    """Where device_map='auto' would put each block over N equal GPUs, and the bytes per GPU."""
    from transformers.integrations.accelerate import get_balanced_memory, infer_auto_device_map

    sizes = _module_bytes(skeleton, precision, compute_dtype, settings.skip_modules)
    model = copy.deepcopy(skeleton.model)
    options = LoadOptions(skip_modules=settings.skip_modules)
    qconfig = precision.quantization_config(options, compute_dtype)
    cap = settings.gpu_memory_bytes or 2 * sum(sizes.values())
    max_memory: dict[Any, int] = {i: cap for i in range(settings.gpus)}
    max_memory["cpu"] = 2**50  # whatever does not fit the GPUs lands here, and is reported
    with _Quiet():
        quantizer = None
        if qconfig is not None:
            quantizer = _bnb_quantizer(qconfig)
            quantizer.preprocess_model(model, device_map={"": "cpu"}, dtype=compute_dtype)
        else:
            model = model.to(precision.unquantized_dtype(compute_dtype))
        no_split = model._no_split_modules
        # the same three steps from_pretrained(device_map="auto") takes
        balanced = get_balanced_memory(model, max_memory=max_memory,
                                       no_split_module_classes=no_split, hf_quantizer=quantizer)
        if quantizer is not None:
            balanced = quantizer.adjust_max_memory(balanced)
        device_map = infer_auto_device_map(model, max_memory=balanced,
                                           no_split_module_classes=no_split, hf_quantizer=quantizer)
    shares: dict[str, GpuShare] = {}
    for prefix, device in device_map.items():
        key = f"cuda:{device}" if isinstance(device, int) else str(device)
        share = shares.setdefault(key, GpuShare(key, 0, []))
        share.modules.append(prefix)
        share.weights_bytes += sum(
            size for name, size in sizes.items()
            if not prefix or name == prefix or name.startswith(prefix + ".")
        )
    return sorted(shares.values(), key=lambda s: (not s.device.startswith("cuda"), s.device))


def _layers_in(share: GpuShare) -> int:
    return sum(1 for m in share.modules if re.search(r"layers\.\d+$", m))


def per_gpu_inference_bytes(result: PrecisionEstimate, arch: Architecture) -> int:
    """The busiest GPU: its weights, its layers' KV cache, one layer's activations, context."""
    if not result.gpu_split:
        return result.inference_total_bytes
    gpus = [s for s in result.gpu_split if s.device.startswith("cuda")]
    return max(
        s.weights_bytes + result.kv_cache_bytes * _layers_in(s) // arch.layers
        + result.activations_bytes + result.context_bytes
        for s in gpus
    )


def gpu_fits(result: PrecisionEstimate) -> dict[str, dict[str, int | None]]:
    """Headroom in bytes per common GPU (negative: does not fit) for inference and training."""
    need = result.per_gpu_inference_bytes or result.inference_total_bytes
    offloaded = any(not s.device.startswith("cuda") for s in result.gpu_split)
    fits = {}
    for name, total in GPUS.items():
        train = None
        if result.training is not None:
            train = total - result.training.peak_bytes - result.context_bytes
        fits[name] = {"inference": None if offloaded else total - need, "training": train}
    return fits


# ---------------------------------------------------------------- the estimate


def resolve_compute_dtype(settings: EstimateSettings) -> torch.dtype:
    """What load() would pick, without probing a GPU this machine may not have."""
    name = settings.compute_dtype or ("bf16" if settings.device.startswith("cuda") else "fp32")
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise QuantbenchError(
            f"unknown compute dtype '{name}'; choose from: fp32, fp16, bf16"
        ) from None


def check_settings(settings: EstimateSettings) -> None:
    from quantbench.optimizers import get_optimizer

    for what, value in (("batch size", settings.batch_size), ("sequence length", settings.seq_len),
                        ("GPU count", settings.gpus), ("LoRA rank", settings.lora_r)):
        if value < 1:
            raise QuantbenchError(f"{what} must be a positive integer, got {value}")
    if settings.train is not None and settings.train not in TRAIN_MODES:
        raise QuantbenchError(f"unknown training mode '{settings.train}'; choose from: "
                              f"{', '.join(TRAIN_MODES)}")
    if not settings.device.startswith(("cuda", "cpu")):
        raise QuantbenchError(f"unknown device '{settings.device}'; choose cuda or cpu")
    get_optimizer(settings.optimizer)


def estimate_precision(skeleton: Skeleton, precision: Precision, settings: EstimateSettings,
                       compute_dtype: torch.dtype) -> PrecisionEstimate:
    arch = skeleton.arch
    qconfig = precision.quantization_config(LoadOptions(skip_modules=settings.skip_modules),
                                            compute_dtype)
    act = precision.unquantized_dtype(compute_dtype).itemsize
    w = weights(skeleton, precision, compute_dtype, settings.skip_modules)
    kv = kv_cache_bytes(arch, settings.batch_size, settings.seq_len, act)
    acts = inference_activation_bytes(arch, settings.batch_size, settings.seq_len, act, qconfig,
                                      largest_linear(skeleton))
    context = settings.context_bytes
    if context is None:
        context = CUDA_CONTEXT_BYTES if settings.device.startswith("cuda") else 0
    peak = w["weights_bytes"] + kv + acts
    result = PrecisionEstimate(
        precision=precision.name, parameters=arch.parameters, **w, kv_cache_bytes=kv,
        activations_bytes=acts, context_bytes=context, peak_inference_bytes=peak,
        inference_total_bytes=peak + context,
    )
    if settings.train:
        result.training, result.training_note = training(skeleton, precision, compute_dtype,
                                                          settings)
    if settings.gpus > 1:
        result.gpu_split = gpu_split(skeleton, precision, compute_dtype, settings)
        result.per_gpu_inference_bytes = per_gpu_inference_bytes(result, arch)
    result.fits = gpu_fits(result)
    return result


ESTIMABLE_BACKENDS = ("torch", "bitsandbytes")


def default_precisions() -> list[str]:
    """Every precision that is a size, not a placement (int8-offload is int8 spilled to CPU).

    Only torch and bitsandbytes rows: their storage is modelled exactly; torchao, HQQ and
    quanto layouts are not modelled yet (estimate() refuses them by name)."""
    return [name for name, p in PRECISIONS.items()
            if not p.needs_gpu and p.backend in ESTIMABLE_BACKENDS]


def estimate(model: str, precisions: list[str] | str | None = None,
             settings: EstimateSettings | None = None, *, config: Any = None) -> Estimate:
    """Memory for MODEL in each precision, from its config alone (HF id, folder or alias)."""
    from quantbench.models import load_config

    settings = settings or EstimateSettings()
    check_settings(settings)
    if isinstance(precisions, str):
        precisions = [p.strip() for p in precisions.split(",") if p.strip()]
    chosen = [get_precision(p) for p in dict.fromkeys(precisions or default_precisions())]
    if unmodelled := [p.name for p in chosen if p.backend not in ESTIMABLE_BACKENDS]:
        raise QuantbenchError(
            f"no memory model yet for {', '.join(unmodelled)} (torchao / HQQ / quanto layouts); "
            f"estimate covers: {', '.join(default_precisions())}"
        )
    config = config if config is not None else load_config(model, settings.trust_remote_code)
    skeleton = build_skeleton(config, settings.skip_modules)
    compute_dtype = resolve_compute_dtype(settings)
    results = [estimate_precision(skeleton, p, settings, compute_dtype) for p in chosen]
    return Estimate(
        model=model, architecture=skeleton.arch, settings=settings,
        compute_dtype=str(compute_dtype).removeprefix("torch."), precisions=results,
        notes=_notes(skeleton.arch, settings, results),
    )


def _notes(arch: Architecture, settings: EstimateSettings,
           results: list[PrecisionEstimate]) -> list[str]:
    notes = []
    if settings.device.startswith("cuda"):
        context = results[0].context_bytes if results else CUDA_CONTEXT_BYTES
        notes.append(f"inference totals include {context // MIB} MiB for the CUDA context, which "
                     "torch.cuda.max_memory_allocated does not report")
    if arch.tied_embeddings:
        notes.append("input and output embeddings are tied: counted once")
    if settings.train and settings.train != "full":
        notes.append(f"LoRA r={settings.lora_r} on every linear of the blocks, fp32 adapters")
    if any(r.training and r.training.paged_optimizer_bytes for r in results):
        notes.append("paged optimizer states live in CUDA unified memory and can spill to host "
                     "RAM under pressure; they are counted in full here")
    return notes
