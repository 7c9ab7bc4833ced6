"""The estimate against measured memory, per model and precision, beside accelerate's figure.

    python benchmarks/estimate_vs_measured.py --out benchmarks/results/estimate
    python benchmarks/estimate_vs_measured.py --device cpu --models smollm2-135m \
        --precisions fp32,nf4 --out est-cpu      # the non-CUDA path, for a quick check

Each (model, precision) loads in its own process (quantbench.isolation), so no memory leaks
between them. On CUDA the
child reports the inspection footprint, torch.cuda.memory_allocated after loading, the peak of
one generate() (batch B, S tokens in the cache) and the memory the driver holds beyond torch's
reservation (the CUDA context). Writes estimate_vs_measured.json and .md into --out.
Targets: weights within 3 %, peak inference within 15 %.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from quantbench.isolation import run_isolated

GIB = 2**30
WEIGHTS_TOLERANCE, PEAK_TOLERANCE = 0.03, 0.15
ACCELERATE_DTYPE = {"fp32": ("float32", 1), "fp16": ("float16", 2), "bf16": ("float16", 2),
                    "int8": ("int8", 4), "nf4": ("int4", 8), "nf4-dq": ("int4", 8),
                    "fp4": ("int4", 8)}


def child(job: dict) -> dict:
    """Load one precision, measure, return a JSON-able dict (runs in its own process)."""
    import torch

    import quantbench
    from quantbench.measure.memory import MemoryProbe

    args = argparse.Namespace(**job)
    probe = MemoryProbe(args.device)
    loaded = quantbench.load(args.model, args.precision, device=args.device)
    out = {"footprint_bytes": loaded.inspection.footprint_bytes,
           "allocated_bytes": probe.allocated_bytes() if probe.on_cuda else None,
           "peak_generate_bytes": None, "context_bytes": None}
    prompt = max(1, args.seq_len - args.new_tokens)
    vocab = loaded.model.config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, prompt), device=args.device)
    probe.reset_peak()
    with torch.no_grad():
        loaded.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                              pad_token_id=0)
    if probe.on_cuda:
        out["peak_generate_bytes"] = probe.peak_bytes()
        free, total = torch.cuda.mem_get_info()
        out["context_bytes"] = total - free - torch.cuda.memory_reserved()
    return out


def measure(model: str, precision: str, args: argparse.Namespace) -> dict:
    job = {"model": model, "precision": precision, "device": args.device, "batch": args.batch,
           "seq_len": args.seq_len, "new_tokens": args.new_tokens}
    outcome = run_isolated(f"{__file__}:child", job)
    return outcome.value if outcome.ok else {"error": outcome.error}


def accelerate_figures(model: str) -> dict:
    """What `accelerate estimate-memory` prints, computed on our meta model (no Hub needed)."""
    import torch
    from accelerate.commands.estimate import estimate_training_usage
    from accelerate.utils import calculate_maximum_sizes
    from transformers import AutoModelForCausalLM

    from quantbench.models import load_config

    with torch.device("meta"):
        empty = AutoModelForCausalLM.from_config(load_config(model), dtype=torch.float32)
    total, _ = calculate_maximum_sizes(empty)
    out = {}
    for precision, (dtype, divisor) in ACCELERATE_DTYPE.items():
        training = max(estimate_training_usage(total, dtype).values())
        out[precision] = {"weights_bytes": total // divisor,
                          "training_bytes": training if training > 0 else None}
    return out


def ratio(a: int | None, b: int | None) -> float | None:
    return round(a / b, 4) if a and b else None


def row(model: str, precision: str, args: argparse.Namespace, acc: dict) -> dict:
    from quantbench.estimate import EstimateSettings, estimate

    settings = EstimateSettings(batch_size=args.batch, seq_len=args.seq_len, device=args.device)
    est = estimate(model, precision, settings).precisions[0]
    got = measure(model, precision, args)
    measured_weights = got.get("allocated_bytes") or got.get("footprint_bytes")
    return {
        "model": model, "precision": precision, "error": got.get("error"),
        "estimated_weights_bytes": est.weights_bytes,
        "measured_footprint_bytes": got.get("footprint_bytes"),
        "measured_allocated_bytes": got.get("allocated_bytes"),
        "weights_ratio": ratio(est.weights_bytes, measured_weights),
        "estimated_peak_bytes": est.peak_inference_bytes,
        "measured_peak_bytes": got.get("peak_generate_bytes"),
        "peak_ratio": ratio(est.peak_inference_bytes, got.get("peak_generate_bytes")),
        "estimated_context_bytes": est.context_bytes,
        "measured_context_bytes": got.get("context_bytes"),
        "accelerate_weights_bytes": acc.get(precision, {}).get("weights_bytes"),
        "accelerate_ratio": ratio(acc.get(precision, {}).get("weights_bytes"), measured_weights),
    }


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    head = (f"batch {args.batch}, {args.seq_len} tokens, device {args.device}; GiB; ratio = "
            "estimate / measured (weights: memory_allocated on CUDA, footprint on CPU)\n\n")
    cols = ["model", "precision", "est. weights", "measured", "ratio", "accelerate", "acc. ratio",
            "est. peak", "measured peak", "peak ratio", "context measured"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]

    def g(n: int | None) -> str:
        return "-" if n is None else f"{n / GIB:.3f}"

    for r in rows:
        measured = r["measured_allocated_bytes"] or r["measured_footprint_bytes"]
        cells = [r["model"], r["precision"], g(r["estimated_weights_bytes"]), g(measured),
                 str(r["weights_ratio"]), g(r["accelerate_weights_bytes"]),
                 str(r["accelerate_ratio"]), g(r["estimated_peak_bytes"]),
                 g(r["measured_peak_bytes"]), str(r["peak_ratio"]),
                 g(r["measured_context_bytes"])]
        error = f" error: {r['error']}" if r["error"] else ""
        lines.append("| " + " | ".join(cells) + " |" + error)
    return head + "\n".join(lines) + "\n"


def within_targets(r: dict) -> bool:
    weights_ok = r["weights_ratio"] is not None and abs(r["weights_ratio"] - 1) <= WEIGHTS_TOLERANCE
    peak_ok = r["peak_ratio"] is None or abs(r["peak_ratio"] - 1) <= PEAK_TOLERANCE
    return weights_ok and peak_ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", default="tinyllama-1.1b-arch,llama-2-7b-arch")
    parser.add_argument("--precisions", default="fp16,int8,nf4,nf4-dq,fp4")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()
    rows = []
    for model in args.models.split(","):
        acc = accelerate_figures(model)
        for precision in args.precisions.split(","):
            rows.append(row(model, precision, args, acc))
            r = rows[-1]
            print(f"{model:22s} {precision:7s} weights {r['weights_ratio']}  peak {r['peak_ratio']}"
                  f"  {'ok' if within_targets(r) else 'OUTSIDE TARGET'} {r['error'] or ''}",
                  flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("device", "batch", "seq_len", "new_tokens")}
    (out / "estimate_vs_measured.json").write_text(
        json.dumps({"settings": settings, "rows": rows}, indent=2))
    (out / "estimate_vs_measured.md").write_text(markdown(rows, args))
    print(markdown(rows, args))
    return 0 if all(within_targets(r) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
