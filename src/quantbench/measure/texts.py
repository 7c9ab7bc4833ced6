"""The texts perplexity is measured on: our held-out passage, a user's file, or an HF dataset.

A file may be plain text (one document), `.jsonl` (one document per line, in its `text` field)
or `.parquet` (a `text` column). Documents are scored separately and weighted by their tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quantbench.errors import QuantbenchError

HELDOUT = Path(__file__).resolve().parent.parent / "data" / "heldout.txt"


def load_documents(text_file: str | None = None, dataset: str | None = None) -> list[str]:
    """The non-empty documents of the chosen text, in order."""
    if text_file:
        docs = _file_documents(Path(text_file))
    elif dataset:
        docs = _dataset_documents(dataset)
    else:
        docs = [HELDOUT.read_text(encoding="utf-8")]
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise QuantbenchError(f"no text to score in '{text_file or dataset}'")
    return docs


def load_text(text_file: str | None = None, dataset: str | None = None) -> str:
    """All documents as one string (what latency prompts are cut from)."""
    return "\n\n".join(load_documents(text_file, dataset))


def _file_documents(path: Path) -> list[str]:
    if not path.is_file():
        raise QuantbenchError(f"text file '{path}' does not exist")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_documents(path)
    if suffix == ".parquet":
        return _parquet_documents(path)
    return [path.read_text(encoding="utf-8")]


def json_lines(path: Path, text: str) -> list[tuple[int, Any]]:
    """(line number, parsed record) for each non-blank line of a JSONL text; one line per bad line."""
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError:
            raise QuantbenchError(f"{path}:{number}: not a JSON line") from None
    return records


def _jsonl_documents(path: Path) -> list[str]:
    docs = []
    for number, record in json_lines(path, path.read_text(encoding="utf-8")):
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise QuantbenchError(f"{path}:{number}: needs a string 'text' field")
        docs.append(record["text"])
    return docs


def _parquet_documents(path: Path) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise QuantbenchError("reading .parquet needs: pip install pyarrow") from None
    try:
        table = pq.read_table(path, columns=["text"])
    except Exception as err:  # a missing column or a broken file: one line, no traceback
        raise QuantbenchError(f"cannot read a 'text' column from '{path}': {type(err).__name__}") from None
    return [t for t in table.column("text").to_pylist() if isinstance(t, str)]


def _dataset_documents(spec: str) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise QuantbenchError("--dataset needs: pip install 'quantbench[datasets]'") from None
    name, config, split = (spec.split(":") + [None, None])[:3]
    try:
        data = datasets.load_dataset(name, config, split=split or "test")
    except Exception as err:
        raise QuantbenchError(f"cannot load dataset '{spec}' (offline?): {type(err).__name__}") from None
    # wikitext-style sets hold one line per row: their rows join back into one text, as before
    return ["\n\n".join(t for t in data["text"] if t.strip())]
