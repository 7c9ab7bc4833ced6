"""Everything a command can check before a worker starts or a model loads.

Each check raises QuantbenchError with one line, which the CLI prints and exits 2 on, so a typo
is never recorded as a measurement and no results file is touched. No torch here: these run in
the parent, in milliseconds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from quantbench.errors import QuantbenchError

ENGINES = ("eager", "fast")


# ---------------------------------------------------------------- models


def model_name(name: str) -> None:
    """An offline alias, a folder with config.json, or something shaped like a Hub id.

    Whether a Hub id exists is asked later, by models.resolve / load_config; this catches what
    can never work (a missing path, a file) without a network and without a traceback.
    """
    from quantbench.models import OFFLINE_ALIASES

    key = name.strip()
    if not key:
        raise QuantbenchError("no model given; pass a Hugging Face id, a folder or an offline alias")
    if key.lower() in OFFLINE_ALIASES:
        return
    path = Path(key).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise QuantbenchError(f"'{key}' is a folder but has no config.json")
        return
    if path.exists():
        raise QuantbenchError(f"model '{key}' is a file; pass the folder that holds config.json")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(key)
        looks_like_path = key.startswith((".", "/", "~")) or key.count("/") > 1
    except HFValidationError:
        looks_like_path = True
    if looks_like_path:
        raise QuantbenchError(
            f"model '{key}' is neither an existing folder nor a Hugging Face id (owner/name); "
            f"offline aliases: {', '.join(OFFLINE_ALIASES)}"
        )


# ---------------------------------------------------------------- precisions


def precision_names(text: str | None) -> list[str]:
    """'fp16,int8,nf4' -> canonical names; refuses an empty list, a repeat or an unknown name."""
    from quantbench.precisions import PRECISIONS, get_precision

    names = [part.strip() for part in (text or "").split(",")]
    if not any(names):
        raise QuantbenchError(f"no precision given; choose from: {', '.join(PRECISIONS)}")
    if "" in names:
        raise QuantbenchError(f"empty entry in the precision list '{text}'")
    canonical = [get_precision(n).name for n in names]
    if repeated := sorted({n for n in canonical if canonical.count(n) > 1}):
        raise QuantbenchError(f"precision {', '.join(repeated)} listed more than once in '{text}'")
    return canonical


def runnable_here(names: Iterable[str], device: str) -> None:
    """Each precision's backend is installed and usable on this device (GPU-only ones on a GPU)."""
    from quantbench.loading import check_backend
    from quantbench.precisions import get_precision

    for name in names:
        check_backend(get_precision(name), device)


# ---------------------------------------------------------------- numbers


def positive(**values: int | None) -> None:
    """Every given value (None: not set) is an integer >= 1; the keyword is the option's name."""
    for option, value in values.items():
        if value is not None and value < 1:
            raise QuantbenchError(f"--{option.replace('_', '-')} must be at least 1, got {value}")


def at_least(minimum: int, **values: int | None) -> None:
    for option, value in values.items():
        if value is not None and value < minimum:
            raise QuantbenchError(f"--{option.replace('_', '-')} must be at least {minimum}, got {value}")


def perplexity_window(context: int, stride: int, max_tokens: int | None) -> None:
    at_least(2, ppl_context=context, max_ppl_tokens=max_tokens)
    if not 1 <= stride <= context:
        raise QuantbenchError(f"--ppl-stride must be between 1 and --ppl-context ({context}), got {stride}")


def engine(name: str) -> None:
    if name not in ENGINES:
        raise QuantbenchError(f"unknown engine '{name}'; choose from: {', '.join(ENGINES)}")


# ---------------------------------------------------------------- text inputs


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise QuantbenchError(f"cannot read {what} '{path}': {err.strerror}") from None


def text_file(path: str | Path, what: str = "text file") -> str:
    """The file's text: it exists, is a file, is not empty, is UTF-8 text (not binary)."""
    path = Path(path)
    if not path.exists():
        raise QuantbenchError(f"{what} '{path}' does not exist")
    if not path.is_file():
        raise QuantbenchError(f"{what} '{path}' is not a file")
    data = _read_bytes(path, what)
    if not data.strip():
        raise QuantbenchError(f"{what} '{path}' is empty")
    if b"\0" in data:
        raise QuantbenchError(f"{what} '{path}' is binary, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise QuantbenchError(f"{what} '{path}' is not UTF-8 text (byte {err.start})") from None


def enough_tokens(text: str, tokenizer_folder: str | None, what: str) -> None:
    """Perplexity needs at least two tokens: one to predict from and one to score.

    Two words always make two tokens; only a shorter text is tokenized, with the model's
    tokenizer when the model folder has one.
    """
    if len(text.split()) >= 2:
        return
    tokenizer = _folder_tokenizer(tokenizer_folder)
    count = len(tokenizer(text)["input_ids"]) if tokenizer is not None else 0
    if count < 2:
        raise QuantbenchError(f"{what} holds fewer than two tokens; perplexity needs at least two")


def dataset(spec: str) -> str:
    """'name:config:split' with datasets installed; its text, loaded once here (then cached)."""
    if not spec.strip() or spec.count(":") > 2 or not spec.split(":")[0].strip():
        raise QuantbenchError(f"bad --dataset '{spec}'; expected name[:config[:split]]")
    from quantbench.measure.quality import load_text

    text = load_text(dataset=spec)
    if not text.strip():
        raise QuantbenchError(f"dataset '{spec}' holds no text")
    return text


def adapter_folder(path: str) -> None:
    if not (Path(path) / "adapter_config.json").is_file():
        raise QuantbenchError(f"adapter '{path}' is not a folder with adapter_config.json")


# ---------------------------------------------------------------- output and results paths


def writable_file(path: str | Path, what: str = "output file") -> None:
    """`path` can be written: not a folder, and its folder exists or can be created."""
    path = Path(path)
    if path.is_dir():
        raise QuantbenchError(f"{what} '{path}' is a folder, not a file")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise QuantbenchError(f"{what} '{path}' is not writable")
        return
    writable_folder(path.parent, what=f"folder of {what} '{path}'")


def writable_folder(path: str | Path, what: str = "output folder") -> None:
    """`path` is a folder we can write in, or can be created under one."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise QuantbenchError(f"{what} '{path}' cannot be created: '{existing}' is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise QuantbenchError(f"{what} '{path}' is not writable")


def results_to_read(path: str | Path) -> None:
    """An existing results file holding at least one readable Result."""
    path = Path(path)
    if not path.exists():
        raise QuantbenchError(f"results file '{path}' does not exist")
    _results_content(path, appending=False)


def results_to_append(path: str | Path) -> None:
    """A results file that a sweep may read (to resume) and append to; absent is fine."""
    path = Path(path)
    writable_file(path, "results file")
    if path.exists():
        _results_content(path, appending=True)


def _results_content(path: Path, appending: bool) -> None:
    from quantbench.results import Result

    if path.is_dir():
        raise QuantbenchError(f"results file '{path}' is a folder, not a file")
    data = _read_bytes(path, "results file")
    if not data.strip():
        if appending:
            return
        raise QuantbenchError(f"results file '{path}' is empty")
    if b"\0" in data:
        raise QuantbenchError(f"'{path}' is binary, not a quantbench results file")
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise QuantbenchError(f"'{path}' is not UTF-8 text, not a quantbench results file") from None
    readable = 0
    for line in lines:
        try:
            Result.from_dict(json.loads(line))
            readable += 1
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
    if not readable:
        raise QuantbenchError(f"'{path}' holds no quantbench Result in {len(lines)} line(s); "
                              "not a results file?")
    if appending and not data.endswith(b"\n"):
        # the next Result would be glued to the broken line and lost with it
        raise QuantbenchError(f"'{path}' ends in a truncated line ({len(lines)}); delete that line "
                              "or pass another --results file")


def calibration_text(names: Iterable[str], options: Any, tokenizer_folder: str | None) -> None:
    """A calibrated precision's text, read and cut into samples here: a missing file or a text
    shorter than one sample fails before any worker starts, not as that precision's result."""
    from quantbench.calibration.scheme import Calibrated
    from quantbench.calibration.text import read_calibration_text, token_samples
    from quantbench.precisions import get_precision

    if not any(isinstance(get_precision(name).scheme, Calibrated) for name in names):
        return
    text = read_calibration_text(options.calibration_file)
    tokenizer = _folder_tokenizer(tokenizer_folder)
    if tokenizer is not None:
        token_samples(text, tokenizer, options.calibration_samples, options.calibration_seq_len,
                      options.calibration_file or "the shipped calibration text")


def same_tokenizer(model_source: str, reference_source: str, reference_name: str) -> None:
    """KL and top-1 compare the two models token by token over the same vocabulary: their
    tokenizers must cut the text alike (checked on the held-out passage's start) and their
    configs name the same vocabulary size."""
    from quantbench.measure.texts import HELDOUT
    from quantbench.models import load_config

    mine, theirs = _folder_tokenizer(model_source), _folder_tokenizer(reference_source)
    if mine is None or theirs is None:
        return  # Hub ids or random-weight folders: the workers' reference check still applies
    sample = HELDOUT.read_text(encoding="utf-8")[:2000]
    sizes = {getattr(load_config(source), "vocab_size", None) for source in (model_source, reference_source)}
    if len(sizes) > 1 or mine(sample)["input_ids"] != theirs(sample)["input_ids"]:
        raise QuantbenchError(f"--reference-model '{reference_name}' has another tokenizer or vocabulary than "
                              "the model measured; quality can only be compared over the same tokens")


def _folder_tokenizer(folder: str | None) -> Any:
    """The model folder's own tokenizer, or None where it has none (random-weight folders)."""
    if not folder or not any(Path(folder).glob("tokenizer*")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)
