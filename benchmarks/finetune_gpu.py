"""Optimizer memory and a short QLoRA run, per model; writes results.jsonl, summary.json/.md.

GPU (the numbers we commit):
    python benchmarks/finetune_gpu.py --out benchmarks/results/finetune_h100
CPU smoke test (tiny settings; paged optimizers fall back to unpaged there):
    python benchmarks/finetune_gpu.py --device cpu --steps 3 --out ft-cpu

tinyllama-1.1b-arch has random weights: its loss is meaningless, its memory and speed are not.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from quantbench.results import Result, append_result
from quantbench.training import LOSS_PLOT, ComparisonConfig, FinetuneConfig, compare_optimizers, finetune


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for results and summaries")
    parser.add_argument("--device", default=None, help="cuda (default when visible) or cpu")
    parser.add_argument("--models", default=None, help="comma-separated; default per device")
    parser.add_argument("--modes", default=None, help="full,lora,qlora (CPU default: lora,qlora)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer-comparison and training steps")
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = args.device.startswith("cuda")
    args.models = (args.models or ("smollm2-135m,tinyllama-1.1b-arch" if gpu else "smollm2-135m")).split(",")
    args.modes = tuple((args.modes or ("full,lora,qlora" if gpu else "lora,qlora")).split(","))
    args.steps = args.steps or (60 if gpu else 3)
    args.seq_len = args.seq_len or (512 if gpu else 16)
    args.batch_size = args.batch_size or (4 if gpu else 1)
    if not gpu:
        torch.set_num_threads(1)  # shared CPUs: one thread avoids oversubscription
    return args


def run_model(model: str, args: argparse.Namespace, out: Path) -> list[Result]:
    gpu = args.device.startswith("cuda")
    comparison = ComparisonConfig(
        modes=args.modes, seq_len=args.seq_len, batch_size=args.batch_size,
        steps=min(args.steps, 10), gradient_checkpointing=gpu,
    )
    results = compare_optimizers(model, comparison, device=args.device)
    config = FinetuneConfig(
        # bitsandbytes' 8-bit step is slow on CPU; the comparison above still measures it there.
        optimizer="paged_adamw_8bit" if gpu else "adamw_torch",
        max_steps=args.steps, seq_len=args.seq_len, batch_size=args.batch_size,
        grad_accum=4 if gpu else 1, learning_rate=2e-4 if gpu else 2e-3,
        lora_r=16 if gpu else 8, lora_alpha=32 if gpu else 16,
        gradient_checkpointing=gpu, progress=gpu,
    )
    adapter = out / f"adapter-{model}"
    results.append(finetune(model, "nf4", None, adapter, config, device=args.device))
    if (adapter / LOSS_PLOT).exists():
        shutil.copy(adapter / LOSS_PLOT, out / f"loss_curve-{model}.png")
    return results


def markdown(results: list[Result]) -> str:
    mib = 2**20
    lines = [
        "| model | mode | precision | optimizer | trainable | state MiB | paged MiB | peak MiB "
        "| step ms | tokens/s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (r for r in results if r.spec.kind == "optimizer"):
        m, w = r.metrics, r.spec.workload
        if not r.ok:
            lines.append(f"| {r.spec.model} | {w['mode']} | {r.spec.precision} | {w['optimizer']} "
                         f"| error: {r.error} | | | | | |")
            continue
        peak = m.get("peak_train_bytes", m.get("rss_growth_train_bytes")) or 0
        lines.append(
            f"| {r.spec.model} | {w['mode']} | {r.spec.precision} | {w['optimizer']} "
            f"| {m['trainable_parameters']:,} | {m['optimizer_state_bytes'] / mib:.2f} "
            f"| {m['paged_state_bytes'] / mib:.2f} | {peak / mib:.0f} | {m['train_step_ms']:.1f} "
            f"| {m['tokens_per_s']:.0f} |"
        )
    lines += ["", "| model | optimizer | steps | loss first -> last | tokens/s | peak MiB | state MiB |",
              "|---|---|---:|---|---:|---:|---:|"]
    for r in (r for r in results if r.spec.kind == "finetune"):
        m = r.metrics
        peak = m.get("peak_train_bytes", m.get("rss_growth_train_bytes")) or 0
        lines.append(
            f"| {r.spec.model}{' (random weights)' if r.random_weights else ''} "
            f"| {r.info['optimizer']} | {m['train_steps']} "
            f"| {m['train_loss_first']:.3f} -> {m['train_loss_last']:.3f} | {m['tokens_per_s']:.0f} "
            f"| {peak / mib:.0f} | {m['optimizer_state_bytes'] / mib:.2f} |"
        )
    notes = sorted({n for r in results for n in r.info.get("notes", [])})
    device = results[0].device if results else ""
    memory = (
        "peak MiB: torch.cuda.max_memory_allocated on GPU (paged state is not in it); "
        "process RSS growth on CPU"
    )
    return "\n".join([f"device: {device}", "", *lines, "", memory, *[f"- note: {n}" for n in notes]]) + "\n"


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    for model in args.models:
        for result in run_model(model, args, out):
            append_result(out / "results.jsonl", result)
            results.append(result)
    (out / "summary.json").write_text(json.dumps([r.to_dict() for r in results], indent=2, default=str))
    (out / "summary.md").write_text(markdown(results))
    print((out / "summary.md").read_text())


if __name__ == "__main__":
    main()
