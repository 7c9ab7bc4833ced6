"""Scoring where the logits are: log-softmax, target log-prob, argmax, top-k and KL run on the
model's device, several windows per forward; only per-token arrays come back to the CPU.

A window is (begin, end, first): the model reads ids[begin:end-1] and its rows predict
positions first..end-1. Windows of one forward are right-padded: causal attention keeps the
padding from touching real positions. Memory stays bounded: the batch shrinks to what a logits
budget holds, and the fp32 log-softmax runs over a bounded number of rows at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from quantbench.measure import reference as refs

Window = tuple[int, int, int, int]  # (document, begin, end, first)
CPU_BUDGET_BYTES = 1 << 30


@dataclass
class TokenArrays:
    """Per scored token, in window order."""

    target_lp: list[np.ndarray] = field(default_factory=list)
    kl: list[np.ndarray] = field(default_factory=list)
    kl_mc_var: list[np.ndarray] = field(default_factory=list)
    top1_match: list[np.ndarray] = field(default_factory=list)
    ref_target_lp: list[np.ndarray] = field(default_factory=list)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(p.device for p in model.parameters() if p.device.type != "meta")


def vocab_size(model: torch.nn.Module) -> int:
    return model.get_output_embeddings().weight.shape[0]


def _budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(free // 4, 1 << 28)
    return CPU_BUDGET_BYTES


def _batches(spans: list[Window], batch_size: int, longest: int, vocab: int, budget: int) -> Iterator[list[Window]]:
    # logits of a forward (model dtype, at most 4 bytes) must fit the budget
    fits = max(1, budget // max(1, longest * vocab * 4))
    size = max(1, min(batch_size, fits))
    for start in range(0, len(spans), size):
        yield spans[start : start + size]


def _forward_rows(model: torch.nn.Module, docs: list[torch.Tensor], group: list[Window],
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the scored rows of every window in `group`, and their target ids."""
    inputs = [docs[d][begin : end - 1] for d, begin, end, _ in group]
    width = max(len(x) for x in inputs)
    batch = torch.zeros(len(inputs), width, dtype=torch.long)
    for i, x in enumerate(inputs):
        batch[i, : len(x)] = x
    # only the rows some window scores go through the LM head (the later windows' first half never does)
    skip = min(first - begin - 1 for _, begin, _, first in group)
    with torch.no_grad():  # not inference_mode: engine/eager.py says why
        try:
            logits = model(batch.to(device), logits_to_keep=width - skip).logits
        except TypeError:  # a model without logits_to_keep
            logits = model(batch.to(device)).logits[:, skip:]
    rows = torch.cat([logits[i, first - begin - 1 - skip : end - begin - 1 - skip]
                      for i, (_, begin, end, first) in enumerate(group)])
    targets = torch.cat([docs[d][first:end] for d, _, end, first in group]).to(device)
    return rows, targets


def score_windows(model: torch.nn.Module, docs: list[torch.Tensor], spans: list[Window], batch_size: int,
                  mode: refs.KLMode, reference: np.ndarray | None, save: np.ndarray | None) -> TokenArrays:
    device = model_device(model)
    vocab = vocab_size(model)
    budget = _budget(device)
    chunk = max(1, budget // (vocab * 4 * 4))  # rows of fp32 log-softmax and its working copies
    generator = torch.Generator(device=device).manual_seed(mode.seed) if save is not None else None
    out, cursor = TokenArrays(), 0
    longest = max(end - 1 - begin for _, begin, end, _ in spans)
    for group in _batches(spans, batch_size, longest, vocab, budget):
        rows, targets = _forward_rows(model, docs, group, device)
        for start in range(0, len(rows), chunk):
            with torch.no_grad():
                lp = torch.log_softmax(rows[start : start + chunk].float(), dim=-1)
                target = targets[start : start + chunk]
                target_lp = lp.gather(1, target.unsqueeze(1)).squeeze(1)
                out.target_lp.append(target_lp.double().cpu().numpy())
                span = slice(cursor, cursor + len(lp))
                if save is not None:
                    save[span] = refs.encode(lp, target_lp, mode, generator)
                if reference is not None:
                    records = np.asarray(reference[span])
                    kl, mc_var = refs.kl(records, lp)
                    out.kl.append(kl.double().cpu().numpy())
                    out.kl_mc_var.append(mc_var.double().cpu().numpy())
                    out.top1_match.append(lp.argmax(-1).cpu().numpy() == refs.reference_top1(records))
                    out.ref_target_lp.append(records["target_lp"].astype(np.float64))
            cursor += len(lp)
        del rows
    if save is not None:
        save.flush()
    return out
