"""Calibrated checkpoints, cached under $QUANTBENCH_CACHE/calibrated/ and keyed by what made them:
the model, the method and its layout, the samples, the skipped modules and the calibration text."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from quantbench.calibration.scheme import METADATA_FILE, Calibrated
from quantbench.calibration.text import calibration_path, read_calibration_text, text_sha256, token_samples
from quantbench.models import cache_dir


def calibration_dtype() -> str:
    """bf16 on a GPU (the usual calibration dtype), fp32 on the CPU (bf16 matmuls are slow there)."""
    import torch

    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def cache_key(scheme: Calibrated, model_dir: Path, options: Any, text: str, dtype: str) -> dict[str, Any]:
    config = model_dir / "config.json"
    return {
        "model": str(model_dir.resolve()),
        "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None,
        "method": scheme.method,
        "bits": scheme.bits,
        "group": scheme.group,
        "samples": options.calibration_samples,
        "seq_len": options.calibration_seq_len,
        "skip_modules": sorted(options.skip_modules),
        "text_sha256": text_sha256(text),
        "dtype": dtype,
    }


def checkpoint_folder(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(key["model"]).name)
    return cache_dir() / "calibrated" / f"{name}-{key['method']}{key['bits']}-g{key['group']}-{digest}"


def calibrated_checkpoint(scheme: Calibrated, model_dir: Path, options: Any) -> Path:
    """The folder of `model_dir` calibrated with `scheme`: from the cache, or made now."""
    if not model_dir.is_dir():
        model_dir = _download(str(model_dir))
    text = read_calibration_text(options.calibration_file)
    dtype = calibration_dtype()
    key = cache_key(scheme, model_dir, options, text, dtype)
    folder = checkpoint_folder(key)
    if (folder / METADATA_FILE).is_file():
        return folder
    from transformers import AutoTokenizer

    from quantbench.calibration.llm_compressor import calibrate

    source = str(calibration_path(options.calibration_file))
    if (model_dir / "quantbench.json").is_file():
        # a random-weight architecture (memory and speed only) has no tokenizer: random ids
        tokenizer, samples = None, random_samples(model_dir, options.calibration_samples, options.calibration_seq_len)
        source = "random token ids"
    else:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=options.trust_remote_code)
        samples = token_samples(text, tokenizer, options.calibration_samples, options.calibration_seq_len, source)
    # written beside the cache entry and renamed into place: an interrupted run is redone
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        calibrate(scheme, model_dir, tmp, tokenizer, samples, source, options, dtype, key)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def random_samples(model_dir: Path, samples: int, seq_len: int) -> list[list[int]]:
    import torch

    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (samples, seq_len), generator=generator).tolist()


def _download(name: str) -> Path:
    """A Hub id: the files calibration needs, in the Hugging Face cache."""
    from huggingface_hub import snapshot_download

    from quantbench.models import resolve

    resolve(name)  # one line if the id is neither cached nor reachable
    return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
