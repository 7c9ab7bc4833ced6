"""Quality scoring at scale on the GPU: a >= 250k-token text on tinyllama-1.1b-arch.

    PYTHONPATH=src python benchmarks/quality_scale.py --out benchmarks/results/h100/quality

bf16 scores the text and writes the reference; nf4 scores it again and reads the reference
(KL and top-1 against it). Timed: the whole score() call, windows 1024 / stride 512, after one
untimed warm-up on a short slice. The previous path (full log-softmax rows copied to the CPU one
window at a time, an fp16 full-vocabulary reference file) is timed in the same run on the first
--legacy-tokens tokens and compared per token. Random weights and random token ids: timing only,
no quality figure is meaningful. Prints a table; writes quality_scale.json into --out.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

import quantbench
from quantbench.measure import quality
from quantbench.results import library_versions

CONTEXT, STRIDE = 1024, 512
TARGET_S = {"bf16": 8.0, "nf4": 15.0}


def legacy_score(model: torch.nn.Module, ids: torch.Tensor, reference: Path | None, save: Path | None) -> None:
    """The scoring path quantbench had before on-device scoring, kept verbatim for the ratio."""
    spans = quality.windows(len(ids), CONTEXT, STRIDE)
    n_scored = sum(end - first for _, end, first in spans)
    vocab = model.get_output_embeddings().weight.shape[0]
    ref = np.load(reference, mmap_mode="r") if reference else None
    out = (np.lib.format.open_memmap(save, mode="w+", dtype=np.float16, shape=(n_scored, vocab))
           if save else None)
    nll, cursor, kls, matches = 0.0, 0, [], []
    for begin, end, first in spans:
        with torch.inference_mode():
            logits = model(ids[begin:end].unsqueeze(0).to(model.device)).logits[0]
        logprobs = torch.log_softmax(logits[first - begin - 1 : end - begin - 1].float(), dim=-1).cpu()
        targets = ids[first:end]
        nll -= logprobs.gather(1, targets.unsqueeze(1)).sum().item()
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


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def side_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.stem + ".*"))


def measure_precision(args: argparse.Namespace, precision: str, work: Path, ref_new: Path, ref_old: Path) -> dict:
    loaded = quantbench.load(args.model, precision)
    model = loaded.model
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (args.tokens,), generator=torch.Generator().manual_seed(0))
    writing = precision == "bf16"
    kwargs = {"save_reference": ref_new} if writing else {"reference": ref_new}
    quality.score(model, ids[:4096], CONTEXT, STRIDE, save_reference=work / "warm.npy", kl=args.kl,
                  batch_size=args.batch_size)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(lambda: quality.score(model, ids, CONTEXT, STRIDE, kl=args.kl, batch_size=args.batch_size,
                                          **kwargs))
    scored = sum(end - first for _, end, first in quality.windows(len(ids), CONTEXT, STRIDE))
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    legacy_ids = ids[: args.legacy_tokens]
    legacy = {"save": ref_old, "reference": None} if writing else {"save": None, "reference": ref_old}
    legacy_s = timed(lambda: legacy_score(model, legacy_ids, **legacy))
    legacy_scored = sum(end - first for _, end, first in quality.windows(len(legacy_ids), CONTEXT, STRIDE))
    row = {
        "precision": precision, "role": "writes the reference" if writing else "reads the reference",
        "tokens": args.tokens, "scored_tokens": scored, "seconds": seconds, "target_seconds": TARGET_S[precision],
        "tokens_per_s": scored / seconds, "peak_allocated_bytes": peak,
        "side_bytes_per_token": side_bytes(ref_new) / scored,
        "legacy_tokens": len(legacy_ids), "legacy_seconds": legacy_s,
        "legacy_tokens_per_s": legacy_scored / legacy_s,
        "legacy_side_bytes_per_token": side_bytes(ref_old) / legacy_scored,
        "speedup_per_token": (legacy_s / legacy_scored) / (seconds / scored),
    }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="tinyllama-1.1b-arch")
    parser.add_argument("--tokens", type=int, default=262_144)
    parser.add_argument("--legacy-tokens", type=int, default=25_000)
    parser.add_argument("--batch-size", type=int, default=8, help="--ppl-batch-size")
    parser.add_argument("--kl", default="sampled")
    parser.add_argument("--work", type=Path, default=None, help="folder for the side files [--out/side]")
    args = parser.parse_args()
    work = args.work or args.out / "side"
    work.mkdir(parents=True, exist_ok=True)
    ref_new, ref_old = work / "reference.npy", work / "reference-legacy.npy"
    rows = []
    for precision in ("bf16", "nf4"):
        rows.append(measure_precision(args, precision, work, ref_new, ref_old))
        gc.collect()  # the model goes with measure_precision's frame
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    report = {
        "command": f"PYTHONPATH=src python benchmarks/quality_scale.py --out {args.out} --model {args.model} "
                   f"--tokens {args.tokens} "
                   f"--legacy-tokens {args.legacy_tokens} --batch-size {args.batch_size} --kl {args.kl}",
        "model": args.model, "context": CONTEXT, "stride": STRIDE, "kl": args.kl, "batch_size": args.batch_size,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(), "rows": rows,
    }
    for path in (ref_new, ref_old, work / "warm.npy"):
        for side in path.parent.glob(path.stem + ".*"):
            side.unlink()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality_scale.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"{args.model} on {report['device']}, windows {CONTEXT}/{STRIDE}, --ppl-batch-size {args.batch_size}, "
          f"--kl {args.kl}")
    print(f"{'precision':9} {'role':22} {'tokens':>8} {'s':>7} {'target s':>8} {'tok/s':>9} {'B/token':>8} "
          f"{'old tok/s':>9} {'old B/token':>11} {'speedup':>7}")
    for r in rows:
        print(f"{r['precision']:9} {r['role']:22} {r['scored_tokens']:>8} {r['seconds']:>7.2f} "
              f"{r['target_seconds']:>8.1f} {r['tokens_per_s']:>9.0f} {r['side_bytes_per_token']:>8.0f} "
              f"{r['legacy_tokens_per_s']:>9.0f} {r['legacy_side_bytes_per_token']:>11.0f} "
              f"{r['speedup_per_token']:>6.1f}x")


if __name__ == "__main__":
    main()
