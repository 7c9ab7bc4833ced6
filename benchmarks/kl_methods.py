"""How well does a compact reference reproduce the exact KL? smollm2-135m, CPU, our passage.

For every scored token of the held-out passage (windows 1024/512, the run's default protocol)
the fp32 reference's full log-softmax is compared with int8/nf4/fp4's, exactly and through
each way of keeping the reference small:
  bucket k      top-k exactly + one tail bucket (a lower bound),
  plain k/m     top-k exactly + m priority-sampled tail ids, r * weighted mean(log p - log q),
  k3 k/m        top-k exactly + tail mass + the same ids' (rho - 1) - log rho (quantbench's),
each sampled method over 5 seeds. Relative error of the mean KL, and for the default layout
and the one a vocabulary over 65,536 gets (int32 ids), of every figure: mean, median, p99,
top-1 agreement.

    PYTHONPATH=src python benchmarks/kl_methods.py --out benchmarks/results/cpu --cache FOLDER

The forward passes (4 x 1.1 GB of log-probs) are computed once into --cache; a later run with
the same folder takes minutes (--only default: just the two layouts, --seeds N: more seeds).
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
VOCAB = 49152
DEFAULT = refs.KLMode()
# the default layout at this vocabulary (uint16 ids) and the one a vocabulary over 65,536 gets
# (int32 ids, fewer samples in the same bytes), both checked figure by figure against exact
LAYOUTS = {"default": (DEFAULT.k, DEFAULT.samples(VOCAB)), "vocabulary > 65,536": (DEFAULT.k, DEFAULT.samples(1 << 17))}
SAMPLED = ((64, 64), (64, 157), *LAYOUTS.values())
SEEDS = 5


def _window_logprobs(model: torch.nn.Module, ids: torch.Tensor, begin: int, end: int, first: int) -> torch.Tensor:
    with torch.inference_mode():
        logits = model(ids[begin : end - 1].unsqueeze(0)).logits[0]
    return torch.log_softmax(logits[first - begin - 1 :].float(), dim=-1)


def logprobs(tokens: int | None, cache: Path | None) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """Every precision's full log-softmax over the scored tokens (fp32, one row per target),
    computed once; with `cache`, kept there as .npy files (1.1 GB per precision) and reused,
    so that trying an estimator costs minutes rather than an hour of forward passes."""
    tokenizer = quantbench.load("smollm2-135m", "fp32").tokenizer
    ids = torch.tensor(tokenizer(quality.load_text())["input_ids"][:tokens])
    out = {}
    for precision in ("fp32", *QUANTIZED):
        path = cache / f"{precision}-{len(ids)}.npy" if cache else None
        if path and path.exists():
            out[precision] = np.load(path, mmap_mode="r")
            continue
        model = quantbench.load("smollm2-135m", precision).model
        rows = [_window_logprobs(model, ids, *w).numpy() for w in quality.windows(len(ids), 1024, 512)]
        out[precision] = np.concatenate(rows)
        del model, rows
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, out[precision])
            out[precision] = np.load(path, mmap_mode="r")
    return out, ids[1:]


def measure(tokens: int | None, cache: Path | None, only_default: bool, seeds: int, chunk: int = 256) -> dict:
    lps, targets = logprobs(tokens, cache)
    per: dict[tuple, list[np.ndarray]] = {}  # (precision, method, seed) -> per-token KL chunks
    top1: dict[str, list[np.ndarray]] = {}
    add = lambda key, value: per.setdefault(key, []).append(value.double().numpy())  # noqa: E731
    sampled = LAYOUTS.values() if only_default else SAMPLED
    for start in range(0, len(targets), chunk):
        rows = slice(start, start + chunk)
        p = torch.from_numpy(np.array(lps["fp32"][rows]))
        qs = {q: torch.from_numpy(np.array(lps[q][rows])) for q in QUANTIZED}
        target_lp = p.gather(1, targets[rows].unsqueeze(1)).squeeze(1)
        exact = refs.encode(p, target_lp, refs.KLMode(exact=True), None)
        for q, q_lp in qs.items():
            add((q, "exact", 0), refs.kl(exact, q_lp)[0])
            top1.setdefault(q, []).append((p.argmax(-1) == q_lp.argmax(-1)).numpy())
        for k in () if only_default else BUCKETS:
            records = refs.encode(p, target_lp, refs.KLMode(k=k, m=1), None)
            for q, q_lp in qs.items():
                add((q, f"bucket {k}", 0), refs.kl(records, q_lp, "bucket")[0])
        for k, m in sampled:
            for seed in range(seeds):
                # one generator per seed and chunk: each chunk's draws do not depend on the others'
                generator = torch.Generator().manual_seed(seed * 1_000_003 + start)
                records = refs.encode(p, target_lp, refs.KLMode(k=k, m=m), generator)
                for q, q_lp in qs.items():
                    for estimator in ("k3",) if only_default else ("plain", "k3"):
                        add((q, f"{estimator} {k}/{m}", seed), refs.kl(records, q_lp, estimator)[0])
                        if estimator == "k3" and (k, m) in LAYOUTS.values():
                            sampled_top1 = refs.reference_top1(records) == q_lp.argmax(-1).numpy()
                            top1.setdefault(f"{q} {k}/{m} {seed}", []).append(sampled_top1)
    kls = {key: np.concatenate(chunks) for key, chunks in per.items()}
    top1 = {key: np.concatenate(chunks) for key, chunks in top1.items()}
    return {"scored_tokens": len(targets), "seeds": seeds, "kls": kls, "top1": top1}


def _bytes(method: str) -> int:
    kind, _, size = method.partition(" ")
    if kind == "exact":
        return 2 * VOCAB + 4
    if kind == "bucket":
        return int(size) * 8 + 8  # ids + fp32 log-probs, tail mass, target
    k, m = (int(x) for x in size.split("/"))
    vocab = 1 << 17 if (k, m) == LAYOUTS["vocabulary > 65,536"] else VOCAB
    return refs.record_dtype(refs.KLMode(k=k, m=m), vocab).itemsize


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
    layouts = {}
    for name, (k, m) in LAYOUTS.items():
        figures = layouts.setdefault(name, {"method": f"k3 {k}/{m}", "bytes_per_token": _bytes(f"k3 {k}/{m}"),
                                            "figures": []})["figures"]
        for q in QUANTIZED:
            exact = kls[(q, "exact", 0)]
            for seed in range(data["seeds"]):
                est = kls[(q, f"k3 {k}/{m}", seed)]
                figures.append({
                    "precision": q, "seed": seed,
                    "kl_mean": [float(exact.mean()), float(est.mean())],
                    "kl_median": [float(np.median(exact)), float(np.median(est))],
                    "kl_p99": [float(np.percentile(exact, 99)), float(np.percentile(est, 99))],
                    "top1_agreement": [float(top1[q].mean()), float(top1[f"{q} {k}/{m} {seed}"].mean())],
                })
    return {"scored_tokens": data["scored_tokens"], "seeds": data["seeds"], "table": rows, "default": str(DEFAULT),
            "layouts_vs_exact": layouts}


def markdown(summary: dict, meta: dict) -> str:
    lines = [
        "# KL from a compact reference vs the exact KL (smollm2-135m, CPU)", "",
        f"{summary['scored_tokens']} scored tokens of the held-out passage, windows 1024/512, "
        f"KL(fp32 || quantized) per token. Relative error of the mean KL; sampled methods over "
        f"{summary['seeds']} seeds.",
        "", f"date {meta['date']} · machine {meta['machine']} · torch {meta['versions'].get('torch')} · "
        f"transformers {meta['versions'].get('transformers')} · bitsandbytes {meta['versions'].get('bitsandbytes')}",
        "", f"command: `{meta['command']}` ({meta['seconds']:.0f} s)", "",
        "| precision | method | bytes/token | exact KL mean | error % (per seed) | max abs error % |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary["table"]:
        lines.append(f"| {row['precision']} | {row['method']} | {row['bytes_per_token']} | {row['exact_kl_mean']:.5f} "
                     f"| {', '.join(f'{e:+.2f}' for e in row['errors_pct'])} | {row['max_abs_error_pct']:.2f} |")
    names = ("kl_mean", "kl_median", "kl_p99", "top1_agreement")
    for name, layout in summary["layouts_vs_exact"].items():
        lines += ["", f"{name.capitalize()} layout ({layout['method']}, {layout['bytes_per_token']} bytes/token) "
                  "vs exact: relative change of each figure, %", "",
                  "| precision | seed | KL mean | KL median | KL p99 | top-1 |", "|---|---|---|---|---|---|"]
        changes = []
        for fig in layout["figures"]:
            changes.append([100 * (fig[n][1] / fig[n][0] - 1) for n in names])
            cells = " | ".join(f"{c:+.2f}" for c in changes[-1])
            lines.append(f"| {fig['precision']} | {fig['seed']} | {cells} |")
        worst, average, spread = np.abs(changes).max(0), np.mean(changes, 0), np.std(changes, 0, ddof=1)
        moments = " | ".join(f"{a:+.2f} ± {s:.2f}" for a, s in zip(average, spread, strict=True))
        lines += ["| **worst** | | " + " | ".join(f"**{w:.2f}**" for w in worst) + " |", f"| mean ± sd | | {moments} |"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu"))
    parser.add_argument("--tokens", type=int, default=None, help="score only the first N tokens")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder for each precision's full log-probs (about 1.1 GB each), reused when present")
    parser.add_argument("--only", choices=("default",), default=None,
                        help="only the default layouts against the exact reference (minutes with --cache)")
    parser.add_argument("--seeds", type=int, default=SEEDS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    summary = summarize(measure(args.tokens, args.cache, args.only == "default", args.seeds))
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.platform(),
            "cpu_threads": args.threads, "versions": library_versions(), "seconds": time.time() - start,
            "command": "PYTHONPATH=src python benchmarks/kl_methods.py --out benchmarks/results/cpu"
                       + (f" --tokens {args.tokens}" if args.tokens else "") + (" --only default" if args.only else "")
                       + (f" --seeds {args.seeds}" if args.seeds != SEEDS else "")
                       + (" --cache FOLDER" if args.cache else "")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kl_methods.json").write_text(json.dumps({"meta": meta, **summary}, indent=1) + "\n")
    text = markdown(summary, meta)
    (args.out / "kl_methods.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
