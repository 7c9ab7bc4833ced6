"""Training data: text files and JSON lines packed into fixed-length token blocks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from quantbench.errors import QuantbenchError
from quantbench.measure.texts import json_lines

SAMPLE_TEXT = Path(__file__).parents[1] / "data" / "train_sample.txt"


def read_texts(path: str | Path) -> list[str]:
    """A .txt file is one text; .jsonl lines give 'text', or 'prompt' + 'completion'."""
    path = Path(path)
    if not path.is_file():
        raise QuantbenchError(f"training data '{path}' does not exist")
    raw = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() not in (".jsonl", ".json"):
        return [raw] if raw.strip() else []
    texts = []
    for number, record in json_lines(path, raw):
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            texts.append(record["text"])
        elif isinstance(record, dict) and "prompt" in record and "completion" in record:
            texts.append(f"{record['prompt']}{record['completion']}")
        else:
            raise QuantbenchError(
                f"{path}:{number}: expected a 'text' field or 'prompt' and 'completion'"
            )
    return texts


def token_blocks(texts: list[str], tokenizer: Any, seq_len: int) -> list[dict[str, torch.Tensor]]:
    """Pack all texts (each ended by EOS) into blocks of seq_len tokens; labels = inputs."""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    if len(ids) < 2:
        raise QuantbenchError("the training data holds no text")
    # A text shorter than one block still trains, as a single shorter block.
    starts = range(0, max(len(ids) - seq_len + 1, 1), seq_len)
    return [_example(ids[s : s + seq_len]) for s in starts]


def random_blocks(vocab_size: int, seq_len: int, count: int, seed: int) -> list[dict[str, Any]]:
    """Random-weight models have no tokenizer: random ids measure speed and memory only."""
    generator = torch.Generator().manual_seed(seed)
    return [_example(torch.randint(vocab_size, (seq_len,), generator=generator).tolist())
            for _ in range(count)]


def _example(ids: list[int]) -> dict[str, torch.Tensor]:
    tensor = torch.tensor(ids, dtype=torch.long)
    return {"input_ids": tensor, "labels": tensor.clone(), "attention_mask": torch.ones_like(tensor)}
