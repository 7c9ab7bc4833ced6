"""Sliding-window perplexity, and KL divergence / top-1 agreement against a reference.

Reference and quantized models run in different processes, so the reference's log-probs of
every scored position are kept in a file (fp16, memory-mapped), the way llama-perplexity keeps
its --kl-divergence-base. Both sides score the very same token ids with the same windows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from quantbench.errors import QuantbenchError

HELDOUT = Path(__file__).resolve().parent.parent / "data" / "heldout.txt"


def load_text(text_file: str | None = None, dataset: str | None = None) -> str:
    """Our held-out passage by default; a user's file; or an HF dataset ('name:config:split')."""
    if text_file:
        path = Path(text_file)
        if not path.is_file():
            raise QuantbenchError(f"text file '{text_file}' does not exist")
        return path.read_text(encoding="utf-8")
    if dataset:
        return _dataset_text(dataset)
    return HELDOUT.read_text(encoding="utf-8")


def _dataset_text(spec: str) -> str:
    try:
        import datasets
    except ImportError:
        raise QuantbenchError("--dataset needs: pip install 'quantbench[datasets]'") from None
    name, config, split = (spec.split(":") + [None, None])[:3]
    try:
        data = datasets.load_dataset(name, config, split=split or "test")
    except Exception as err:
        raise QuantbenchError(f"cannot load dataset '{spec}' (offline?): {type(err).__name__}") from None
    return "\n\n".join(t for t in data["text"] if t.strip())


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_target) per window; every position from 1 on is a target exactly once.

    The first window scores all it sees; each later one scores the next `stride` positions
    (at most context - 1, so every target keeps some context) and reaches back a full context.
    """
    if context < 2 or stride < 1 or stride > context:
        raise QuantbenchError(f"need 2 <= context and 1 <= stride <= context (got {context}, {stride})")
    end = min(context, n_tokens)
    out = [(0, end, 1)] if end > 1 else []
    step = min(stride, context - 1)
    while end < n_tokens:
        first, end = end, min(end + step, n_tokens)
        out.append((max(0, end - context), end, first))
    return out


@dataclass
class Scores:
    nll_sum: float
    n_tokens: int
    kl: np.ndarray | None = None  # per scored token
    top1_match: np.ndarray | None = None

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.nll_sum / self.n_tokens))


def _window_logprobs(model: torch.nn.Module, ids: torch.Tensor, begin: int, end: int, first: int) -> torch.Tensor:
    """Log-probs (fp32) predicting positions first..end-1, from the window ids[begin:end]."""
    device = next(p.device for p in model.parameters() if p.device.type != "meta")
    with torch.inference_mode():
        logits = model(ids[begin:end].unsqueeze(0).to(device)).logits[0]
    rows = logits[first - begin - 1 : end - begin - 1].float()
    return torch.log_softmax(rows, dim=-1).cpu()


def score(
    model: torch.nn.Module,
    ids: torch.Tensor,
    context: int,
    stride: int,
    reference: Path | None = None,
    save_reference: Path | None = None,
) -> Scores:
    """Token-weighted NLL over sliding windows; KL and top-1 vs `reference` when given."""
    spans = windows(len(ids), context, stride)
    n_scored = sum(end - first for _, end, first in spans)
    ref = _open_reference(reference, n_scored) if reference else None
    out = _create_reference(save_reference, n_scored, model) if save_reference else None
    nll_sum, cursor, kls, matches = 0.0, 0, [], []
    for begin, end, first in spans:
        logprobs = _window_logprobs(model, ids, begin, end, first)
        targets = ids[first:end]
        nll_sum -= logprobs.gather(1, targets.unsqueeze(1)).sum().item()
        rows = slice(cursor, cursor + len(targets))
        if out is not None:
            out[rows] = logprobs.numpy().astype(np.float16)
        if ref is not None:
            ref_lp = torch.from_numpy(np.asarray(ref[rows], dtype=np.float32))
            kls.append((ref_lp.exp() * (ref_lp - logprobs)).sum(-1).clamp_min(0).numpy())
            matches.append((ref_lp.argmax(-1) == logprobs.argmax(-1)).numpy())
        cursor += len(targets)
    if out is not None:
        out.flush()
    return Scores(
        nll_sum=nll_sum,
        n_tokens=n_scored,
        kl=np.concatenate(kls) if kls else None,
        top1_match=np.concatenate(matches) if matches else None,
    )


def _vocab(model: torch.nn.Module) -> int:
    return model.get_output_embeddings().weight.shape[0]


def _create_reference(path: Path, n_scored: int, model: torch.nn.Module) -> np.memmap:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (n_scored, _vocab(model))
    path.with_suffix(".json").write_text(json.dumps({"shape": shape}))
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)


def _open_reference(path: Path, n_scored: int) -> np.ndarray:
    if not path.exists():
        raise QuantbenchError(f"reference log-probs '{path}' are missing; run the reference precision first")
    ref = np.load(path, mmap_mode="r")
    if ref.shape[0] != n_scored:
        raise QuantbenchError(f"reference log-probs '{path}' were made with other settings; rerun with --force")
    return ref


def reference_perplexity(path: Path, ids: torch.Tensor, context: int, stride: int) -> float:
    """The reference's perplexity recomputed from its saved log-probs (no model needed)."""
    spans = windows(len(ids), context, stride)
    targets = torch.cat([ids[first:end] for _, end, first in spans]).numpy()
    ref = np.load(path, mmap_mode="r")
    picked = ref[np.arange(len(targets)), targets].astype(np.float64)
    return float(np.exp(-picked.mean()))


def quality_metrics(scores: Scores, reference_ppl: float | None) -> dict[str, float | int | None]:
    metrics: dict[str, float | int | None] = {
        "perplexity": scores.perplexity,
        "scored_tokens": scores.n_tokens,
    }
    if scores.kl is not None:
        metrics |= {
            "kl_mean": float(scores.kl.mean()),
            "kl_p99": float(np.percentile(scores.kl, 99)),
            "kl_median": float(np.median(scores.kl)),
            "top1_agreement": float(scores.top1_match.mean()),
        }
    if reference_ppl:
        metrics["ppl_ratio"] = scores.perplexity / reference_ppl
    return metrics
