"""How well does a compact reference reproduce the exact KL? smollm2-135m, CPU, our passage.

For every scored token of the held-out passage (windows 1024/512, the run's default protocol)
the fp32 reference's full log-softmax is compared with int8/nf4/fp4's, exactly and through
each way of keeping the reference small:
  bucket k      top-k exactly + one tail bucket (a lower bound),
  plain k/m     top-k exactly + m tail samples, r * mean(log p - log q),
  k3 k/m        top-k exactly + tail mass + m tail samples of (rho - 1) - log rho (quantbench's),
each sampled method over 5 seeds. Relative error of the mean KL (and, for the default, of the
median, p99 and top-1 agreement) against the exact figures.

    PYTHONPATH=src python benchmarks/kl_methods.py --out benchmarks/results/cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

import quantbench
from quantbench.measure import quality
from quantbench.measure import reference as refs
from quantbench.results import library_versions

QUANTIZED = ("int8", "nf4", "fp4")
BUCKETS = (16, 64, 256)
SAMPLED = ((32, 32), (64, 64), (128, 64))
SEEDS = 5
DEFAULT = refs.KLMode()


def _window_logprobs(model: torch.nn.Module, ids: torch.Tensor, begin: int, end: int, first: int) -> torch.Tensor:
    with torch.inference_mode():
        logits = model(ids[begin : end - 1].unsqueeze(0)).logits[0]
    return torch.log_softmax(logits[first - begin - 1 :].float(), dim=-1)


def measure(tokens: int | None) -> dict:
    models = {p: quantbench.load("smollm2-135m", p) for p in ("fp32", *QUANTIZED)}
    tokenizer = models["fp32"].tokenizer
    ids = torch.tensor(tokenizer(quality.load_text())["input_ids"][:tokens])
    per: dict[tuple, list[np.ndarray]] = {}  # (precision, method, seed) -> per-token KL chunks
    top1: dict[str, list[np.ndarray]] = {}
    add = lambda key, value: per.setdefault(key, []).append(value.double().numpy())  # noqa: E731
    for begin, end, first in quality.windows(len(ids), 1024, 512):
        p = _window_logprobs(models["fp32"].model, ids, begin, end, first)
        qs = {q: _window_logprobs(models[q].model, ids, begin, end, first) for q in QUANTIZED}
        target_lp = p.gather(1, ids[first:end].unsqueeze(1)).squeeze(1)
        exact = refs.encode(p, target_lp, refs.KLMode(exact=True), None)
        for q, q_lp in qs.items():
            add((q, "exact", 0), refs.kl(exact, q_lp)[0])
            top1.setdefault(q, []).append((p.argmax(-1) == q_lp.argmax(-1)).numpy())
        for k in BUCKETS:
            records = refs.encode(p, target_lp, refs.KLMode(k=k, m=1), None)
            for q, q_lp in qs.items():
                add((q, f"bucket {k}", 0), refs.kl(records, q_lp, "bucket")[0])
        for k, m in SAMPLED:
            for seed in range(SEEDS):
                generator = torch.Generator().manual_seed(seed)
                records = refs.encode(p, target_lp, refs.KLMode(k=k, m=m), generator)
                for q, q_lp in qs.items():
                    for estimator in ("plain", "k3"):
                        add((q, f"{estimator} {k}/{m}", seed), refs.kl(records, q_lp, estimator)[0])
                        if estimator == "k3" and (k, m) == (DEFAULT.k, DEFAULT.m):
                            sampled_top1 = refs.reference_top1(records) == q_lp.argmax(-1).numpy()
                            top1.setdefault(f"{q} sampled {seed}", []).append(sampled_top1)
    kls = {key: np.concatenate(chunks) for key, chunks in per.items()}
    return {"scored_tokens": len(ids) - 1, "kls": kls, "top1": {k: np.concatenate(v) for k, v in top1.items()}}


def _bytes(method: str) -> int:
    kind, _, size = method.partition(" ")
    if kind == "exact":
        return 2 * 49152 + 4
    if kind == "bucket":
        return int(size) * 8 + 8  # ids + fp32 log-probs, tail mass, target
    k, m = (int(x) for x in size.split("/"))
    return refs.record_dtype(refs.KLMode(k=k, m=m), 49152).itemsize


def summarize(data: dict) -> dict:
    kls, top1 = data["kls"], data["top1"]
    rows = []
    methods = list(dict.fromkeys(method for _, method, _ in kls))
    for q in QUANTIZED:
        exact = kls[(q, "exact", 0)]
        for method in methods:
            if method == "exact":
                continue
            seeds = [s for (qq, mm, s) in kls if qq == q and mm == method]
            errors = [100 * (kls[(q, method, s)].mean() / exact.mean() - 1) for s in seeds]
            rows.append({"precision": q, "method": method, "bytes_per_token": _bytes(method),
                         "exact_kl_mean": float(exact.mean()), "errors_pct": [round(e, 3) for e in errors],
                         "max_abs_error_pct": round(max(abs(e) for e in errors), 3)})
    default = f"k3 {DEFAULT.k}/{DEFAULT.m}"
    figures = []
    for q in QUANTIZED:
        exact = kls[(q, "exact", 0)]
        for seed in range(SEEDS):
            est = kls[(q, default, seed)]
            agree = top1[f"{q} sampled {seed}"].mean()
            figures.append({
                "precision": q, "seed": seed,
                "kl_mean": [float(exact.mean()), float(est.mean())],
                "kl_median": [float(np.median(exact)), float(np.median(est))],
                "kl_p99": [float(np.percentile(exact, 99)), float(np.percentile(est, 99))],
                "top1_agreement": [float(top1[q].mean()), float(agree)],
            })
    return {"scored_tokens": data["scored_tokens"], "table": rows, "default": str(DEFAULT), "default_vs_exact": figures}


def markdown(summary: dict, meta: dict) -> str:
    lines = [
        "# KL from a compact reference vs the exact KL (smollm2-135m, CPU)", "",
        f"{summary['scored_tokens']} scored tokens of the held-out passage, windows 1024/512, "
        f"KL(fp32 || quantized) per token. Relative error of the mean KL; sampled methods over {SEEDS} seeds.",
        "", f"date {meta['date']} · machine {meta['machine']} · torch {meta['versions'].get('torch')} · "
        f"transformers {meta['versions'].get('transformers')} · bitsandbytes {meta['versions'].get('bitsandbytes')}",
        "", f"command: `{meta['command']}` ({meta['seconds']:.0f} s)", "",
        "| precision | method | bytes/token | exact KL mean | error % (per seed) | max abs error % |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary["table"]:
        lines.append(f"| {row['precision']} | {row['method']} | {row['bytes_per_token']} | {row['exact_kl_mean']:.5f} "
                     f"| {', '.join(f'{e:+.2f}' for e in row['errors_pct'])} | {row['max_abs_error_pct']:.2f} |")
    lines += ["", f"Default ({summary['default']}, estimator k3) vs exact: relative change of each figure, %", "",
              "| precision | seed | KL mean | KL median | KL p99 | top-1 |", "|---|---|---|---|---|---|"]
    for fig in summary["default_vs_exact"]:
        names = ("kl_mean", "kl_median", "kl_p99", "top1_agreement")
        cells = [100 * (fig[name][1] / fig[name][0] - 1) for name in names]
        lines.append(f"| {fig['precision']} | {fig['seed']} | " + " | ".join(f"{c:+.2f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu"))
    parser.add_argument("--tokens", type=int, default=None, help="score only the first N tokens")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    summary = summarize(measure(args.tokens))
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.platform(),
            "cpu_threads": args.threads, "versions": library_versions(), "seconds": time.time() - start,
            "command": "PYTHONPATH=src python benchmarks/kl_methods.py --out benchmarks/results/cpu"
                       + (f" --tokens {args.tokens}" if args.tokens else "")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kl_methods.json").write_text(json.dumps({"meta": meta, **summary}, indent=1) + "\n")
    text = markdown(summary, meta)
    (args.out / "kl_methods.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
