"""Decode speed of the fast engine against eager `generate` and the memory-bandwidth limit.

    python benchmarks/decode_speed.py --model tinyllama-1.1b-arch \
        --precisions fp16,bf16,int8,int8-t0,nf4 --out DIR

Per precision and kernels choice, in one process each (a kernels choice never runs after
another's engine in the same process: one left its mark on the next's timing): eager ms/token,
fast ms/token with each of --kernels (quantbench's GEMVs; bitsandbytes' and cuBLAS kernels), the bandwidth
limit (weights footprint bytes / measured copy bandwidth), the ratios fast/eager and limit/fast,
greedy-token equality with eager, where the time goes per token (profile), and a tokens/s curve
over batch sizes for the fast engine. `int8-t0` is LLM.int8 with outlier threshold 0. Decode
ms/token as `measure.latency` times it, medians of repeats: the fast engine's N - 1 steps after
its first token on their own, eager's (generate(N) - generate(1)) / (N - 1); so fast_over_eager
divides figures timed two ways (eager's per-token time, 20-170 ms, dwarfs the difference).
"*_generate1_ms" is the time to the first token.
Writes decode_speed.json and decode_speed.md into --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {  # fast ms/token, batch 1, by model
    "tinyllama-1.1b-arch": {"fp16": 1.4, "bf16": 1.4, "nf4": 0.9, "nf4-dq": 0.9, "int8": 1.3, "int8-t0": 1.2},
    "llama-2-7b-arch": {"fp16": 6.5, "nf4": 3.0, "int8": 4.5},
}
VARIANTS = {"int8-t0": ("int8", {"int8_threshold": 0.0})}  # benchmark name -> precision, options
# Suffixes that change how the fast engine runs: "fp16+exact+autotune"; or the kernels' modes
# (KERNEL_MODES): "nf4+bnbmath" the 4-bit kernel with bitsandbytes' roundings, "+regs" its
# register lookup, "+pdl" / "+prefetch" launches overlapping the previous kernel (overlap.py; "+every":
# every kernel launched dependently, the 4-bit GEMV also prefetching),
# "+once" each GEMV's row work (norm, silu * up, LLM.int8's quantization) in a kernel before it,
# "+early" LLM.int8's outlier list gathered before its int8 dot, "+shuffle" / "+shared" the 4-bit
# codes looked up by warp shuffles (the default) or from shared memory, "+parts" / "+one" the decode
# attention's cache split into parts (flash-decoding; the default) or walked in one program per head,
# "+stages3" every kernel's main loop software-pipelined three steps deep, "+4bit-stages3" only the
# 4-bit GEMV's (config.pipeline_stages: one depth mode per engine, the last one named), "+xsplit"
# the 4-bit activation exchanged as split fp32 values, not as 32-bit words of 16-bit pairs, and
# "+xdirect" read by every thread from memory, not exchanged (config.fourbit_activation), "+column"
# the 4-bit K-step's tiles ordered [blocks, rows, bytes] (config.fourbit_tile).
KERNEL_MODES = {
    "bnbmath": ("4bit_numerics", "bitsandbytes"),
    "regs": ("4bit_lookup", "registers"),
    "masked": ("int8_outlier_pass", "masked"),
    "skip": ("int8_outlier_pass", "skip"),
    "pdl": ("launch_overlap", "launch"),
    "prefetch": ("launch_overlap", "prefetch"),
    "nopdl": ("launch_overlap", "off"),
    "every": ("launch_overlap", "every"),
    "auto": ("launch_overlap", "auto"),
    "once": ("row_prologue", "once"),
    "inline": ("row_prologue", "inline"),
    "early": ("int8_list_gather", "early"),
    "shuffle": ("4bit_lookup", "shuffle"),
    "shared": ("4bit_lookup", "shared"),
    "parts": ("attention_parts", "parts"),
    "one": ("attention_parts", "one"),
    "xsplit": ("4bit_activation", "split"),
    "xdirect": ("4bit_activation", "direct"),
    "column": ("4bit_tile", "column"),
} | {f"{kind}-stages{n}".lstrip("-"): ("pipeline_stages", f"{kind}:{n}".lstrip(":"))
     for kind in ("", "4bit", "int8", "dense", "attention") for n in (2, 3, 4)}
DEFAULT_MODES: dict[str, str] = {}  # config.modes() before any kernels choice's own (measure sets it)
FLAGS = {
    "exact": {"exact_casts": True},
    "autotune": {"compile_mode": "max-autotune-no-cudagraphs"},
    "nocompile": {"compile": False, "capture": False},
} | {flag: {} for flag in KERNEL_MODES}


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second: the same probe Results use."""
    from quantbench.measure.memory import copy_bandwidth_bytes_per_s

    return copy_bandwidth_bytes_per_s("cuda")


def decode_ms(engine, ids, tokens: int, repeats: int) -> tuple[float, float]:  # noqa: ANN001
    """(decode ms/token, ms to the first token), by the latency module itself (callers warm up first)."""
    from quantbench.measure.latency import measure_decode

    device = "cuda" if engine.device.type == "cuda" else "cpu"
    measured = measure_decode(engine, ids, tokens, device, repeats, warmup=0)
    return measured["decode_ms_per_token"], measured["ttft_ms"]


def profile_steps(engine, ids, steps: int = 16) -> dict:  # noqa: ANN001
    """Where a decode step's time goes: GPU kernel time per token, by kernel, vs wall time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from quantbench.engine import synchronize

    engine.generate(ids, 2)  # leaves the slot ready at a valid position
    steps = max(1, min(steps, (engine.max_seq_len - ids.shape[1] - 2) // 2))  # two loops, inside the cache
    slot = engine._slot
    step = slot.graph.replay if slot.graph is not None else lambda: engine._decode_step(slot)
    # Without the profiler first: the host's time to issue the replays against their wall time.
    # Equal means the step is bound by the launch of the graph, not by the GPU's work.
    synchronize(engine.device)
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(steps):
            step()
    issued = time.perf_counter() - start
    synchronize(engine.device)
    plain_wall = time.perf_counter() - start
    activities = [ProfilerActivity.CPU]
    activities += [ProfilerActivity.CUDA] if torch.cuda.is_available() else []
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(steps):
                step()
        synchronize(engine.device)
        wall = time.perf_counter() - start
    kernels = [
        e for e in prof.key_averages()
        if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0
    ]
    total_us = sum(e.self_device_time_total for e in kernels)
    top = sorted(kernels, key=lambda e: -e.self_device_time_total)[:12]
    return {
        "unprofiled_issue_ms_per_token": 1e3 * issued / steps,
        "unprofiled_wall_ms_per_token": 1e3 * plain_wall / steps,
        "wall_ms_per_token": 1e3 * wall / steps,
        "kernel_ms_per_token": total_us / 1e3 / steps,
        "kernels_per_token": sum(e.count for e in kernels) / steps,
        "top_kernels": [
            {"name": e.key[:90], "ms_per_token": e.self_device_time_total / 1e3 / steps,
             "calls_per_token": e.count / steps}
            for e in top
        ],
    }


def near_tie(engine, ids, eager_tokens, fast_tokens, at: int) -> dict:  # noqa: ANN001
    """At the first differing token: eager fp32 score of its own choice minus the fast one's,
    beside the spread of the scores (a near tie flips on rounding). The scores come from one
    forward over the whole prefix, so they are close to, not equal to, generate's."""
    import torch

    prefix = torch.cat([ids.to(engine.device), eager_tokens[:, :at].to(engine.device)], dim=1)
    with torch.no_grad():
        scores = engine.model(prefix).logits[:, -1].float()[0]
    top2 = scores.topk(2).values
    eager_choice, fast_choice = scores[eager_tokens[0, at]], scores[fast_tokens[0, at]]
    return {
        "eager_minus_fast_choice": float(eager_choice - fast_choice),
        "top1_minus_top2": float(top2[0] - top2[1]),
        "scores_std": float(scores.std()),
    }


def batch_curve(engine, vocab: int, prompt: int, tokens: int, batches: list[int]) -> list[dict]:  # noqa: ANN001
    import torch

    points = []
    for batch in batches:
        seed = torch.Generator().manual_seed(batch)
        ids = torch.randint(3, vocab, (batch, prompt), generator=seed)
        try:
            engine.generate(ids, tokens)  # compiles / captures for this batch size
            ms, _ = decode_ms(engine, ids, tokens, repeats=2)
            points.append({"batch": batch, "ms_per_step": ms, "tokens_per_s": batch * 1e3 / ms})
        except torch.OutOfMemoryError:
            points.append({"batch": batch, "error": "out of memory"})
            engine._slot = None  # drop the half-built cache before the next size
            torch.cuda.empty_cache()
    return points


def measure(args: argparse.Namespace, name: str, save) -> dict:  # noqa: ANN001
    """Everything for one precision, in this process."""
    import torch

    import quantbench
    from quantbench.engine import get_engine
    from quantbench.engine.fast import FastEngine

    if args.fourbit_table:
        apply_fourbit_table(json.loads(Path(args.fourbit_table).read_text()))
    base, *flags = name.split("+")
    from quantbench.kernels import config

    config.set_modes(dict(KERNEL_MODES[flag] for flag in flags if flag in KERNEL_MODES))
    DEFAULT_MODES.update(config.modes())
    precision, options = VARIANTS.get(base, (base, {}))
    engine_options = {"compile_mode": args.compile_mode}
    for flag in flags:
        engine_options |= FLAGS[flag]
    loaded = quantbench.load(args.model, precision, **options)
    model = loaded.model
    vocab = model.config.vocab_size
    max_seq = args.prompt_len + max(args.new_tokens, args.eager_tokens, args.curve_tokens)
    max_batch = max(args.batches)
    ids = torch.randint(3, vocab, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))

    eager = get_engine("eager", model, max_batch, max_seq)
    eager.warmup(ids, 4)
    check = min(args.eager_tokens, 32)
    eager_tokens = eager.generate(ids, check)
    eager_ms, eager_first = decode_ms(eager, ids, args.eager_tokens, args.repeats)
    limit_ms = 1e3 * loaded.inspection.footprint_bytes / args.bandwidth
    result = {
        "precision": name, "options": options,
        "weights_footprint_bytes": loaded.inspection.footprint_bytes,
        "eager_ms_per_token": eager_ms, "eager_generate1_ms": eager_first,
        "bandwidth_limit_ms_per_token": limit_ms, "checked_tokens": check,
        "target_ms_per_token": TARGETS.get(args.model, {}).get(base), "by_kernels": {},
    }
    kernels = args.kernels  # one choice: the parent runs each in a process of its own
    fast = FastEngine(model, max_batch, max_seq, **kernel_options(kernels), **engine_options)
    start = time.perf_counter()
    fast.warmup(ids, 4)
    warmup_s = time.perf_counter() - start
    fast_tokens = fast.generate(ids, check)
    same = bool(torch.equal(eager_tokens.cpu(), fast_tokens.cpu()))
    mismatch = None if same else int((eager_tokens != fast_tokens).nonzero()[0, 1])
    gap = None if same else near_tie(fast, ids, eager_tokens, fast_tokens, mismatch)
    fast_ms, fast_first = decode_ms(fast, ids, args.new_tokens, args.repeats)
    result["by_kernels"][kernels] = {
        "engine": fast.describe(), "fast_ms_per_token": fast_ms,
        "fast_over_eager": fast_ms / eager_ms, "limit_over_fast": limit_ms / fast_ms,
        "fast_generate1_ms": fast_first, "fast_warmup_s": warmup_s, "same_tokens": same,
        "first_mismatch": mismatch, "mismatch_gap": gap,
    }
    save(result)  # a later failure or timeout keeps the numbers so far
    if not args.profile:
        return result
    result["profiled_kernels"] = kernels
    # An uncaptured step is host-bound and slow: a few batch sizes tell its story.
    batches = args.batches if fast.capture else [b for b in args.batches if b in (1, 8, 64)]
    for key, work in (
        ("profile_b1", lambda: profile_steps(fast, ids)),
        ("curve", lambda: batch_curve(fast, vocab, args.prompt_len, args.curve_tokens, batches)),
    ):
        if key == "curve" and flags:
            continue  # engine variants are compared at batch 1 only
        try:
            result[key] = work()
        except Exception as err:  # report it beside the numbers already measured
            result[f"{key}_error"] = f"{type(err).__name__}: {str(err)[:300]}"
        save(result)
    return result


def apply_fourbit_table(swept: dict) -> None:
    """Launch shapes and lookup mode from a kernels_gemv.py --sweep run, in place of config's."""
    from quantbench.kernels import config

    config.FOURBIT.update({(n, k): tuple(shape) for n, k, shape in swept["table"]})
    config.set_fourbit_gather(swept["gather"])
    config.set_fourbit_pairs(swept["pairs"])
    if "stages" in swept:  # a sweep over pipeline depths: the depth its shapes were timed with
        config.set_pipeline_stages(f"4bit:{swept['stages']}" if swept["stages"] else "off")


def kernel_options(spec: str) -> dict:
    """'bnb', 'quantbench' (its default kernels) or 'quantbench/KIND/KIND...' (those of its
    kernels: dense, 4bit, int8, attention; layers of other kinds keep their own forwards); a
    '+MODE' suffix (KERNEL_MODES) sets a kernel mode for this engine only, e.g.
    'quantbench+prefetch'. Modes are read when the engine captures its step."""
    from quantbench.kernels import config

    spec, *modes = spec.split("+")
    if "regs" in modes:  # the lookup's tables are built once per model, at the first install
        raise SystemExit("the register lookup is set per precision (nf4+bnbmath+regs), not per kernels choice")
    if unknown := [mode for mode in modes if mode not in KERNEL_MODES]:
        raise SystemExit(f"unknown kernel mode(s) {', '.join(unknown)}: one of {', '.join(KERNEL_MODES)}")
    config.set_modes(DEFAULT_MODES | dict(KERNEL_MODES[mode] for mode in modes))
    kernels, *kinds = spec.split("/")
    return {"kernels": kernels, "kernel_kinds": tuple(kinds) or None}


def measure_precision(args: argparse.Namespace, name: str) -> dict:
    """One precision's row: each kernels choice measured in a child process of its own, merged.
    The row's headline is quantbench's default kernels, else the last choice; the profile and the
    batch curve come from the last choice."""
    choices = [c for c in args.kernels.split(",") if c]
    row: dict = {"precision": name, "by_kernels": {}}
    for i, kernels in enumerate(choices):
        part = run_child(args, name, kernels, profile=i == len(choices) - 1)
        measured = part.get("by_kernels", {}).get(kernels)
        row["by_kernels"][kernels] = measured or {"error": part.get("error", "no result")}
        row |= {k: v for k, v in part.items() if k != "by_kernels" and k not in row}  # eager: the first's
    measured = [k for k, v in row["by_kernels"].items() if "fast_ms_per_token" in v]
    if measured:
        row |= row["by_kernels"]["quantbench" if "quantbench" in measured else measured[-1]]
        target = row.get("target_ms_per_token")
        row["meets_target"] = target is not None and row["fast_ms_per_token"] <= target
    return row


def run_child(args: argparse.Namespace, name: str, kernels: str, profile: bool) -> dict:
    """One precision with one kernels choice in its own process, so memory, failures and what an
    engine leaves behind never reach the next."""
    out = Path(args.parts) / f"{name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--child", name, "--bandwidth", str(args.bandwidth)]
    cmd += [f"--{k.replace('_', '-')}={v}" for k, v in _forwarded(args).items()]
    cmd += [f"--kernels={kernels}"] + (["--profile"] if profile else [])
    try:
        proc = subprocess.run(cmd, timeout=args.timeout_s, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        proc = None
    if out.exists():
        return {**json.loads(out.read_text()), **({} if proc else {"timed_out": True})}
    if proc is None:
        return {"precision": name, "error": f"timed out after {args.timeout_s} s"}
    with (Path(args.out) / "errors.log").open("a") as log:  # the whole story of a failure
        log.write(f"==== {name}: exit {proc.returncode}\n{proc.stderr[-20000:]}\n")
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"precision": name, "error": f"exit {proc.returncode}: " + " | ".join(tail)}


def _forwarded(args: argparse.Namespace) -> dict:
    keys = ("model", "parts", "prompt_len", "new_tokens", "eager_tokens", "curve_tokens",
            "repeats", "compile_mode", "fourbit_table")
    forwarded = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    forwarded["batches"] = ",".join(map(str, args.batches))
    return forwarded


def markdown(report: dict) -> str:
    lines = [
        f"# Decode speed: {report['model']} on {report['device']}",
        "",
        f"Copy bandwidth {report['bandwidth_bytes_per_s'] / 1e12:.2f} TB/s (read + write); "
        f"batch 1, prompt {report['prompt_len']}; {report['timestamp']}.",
        "",
        "| precision | eager ms/tok | fast+bnb ms/tok | fast+quantbench ms/tok | limit ms/tok "
        "| share of limit (ours) | same tokens (bnb/ours) | target | pass | mode (ours) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if "error" in r and "eager_ms_per_token" not in r:
            lines.append(f"| {r['precision']} | error: {r['error'][:120]} |||||||||")
            continue
        by = r.get("by_kernels", {})

        def ms(kernels: str, by: dict = by) -> str:
            if "error" in by.get(kernels, {}):
                return "error"
            return f"{by[kernels]['fast_ms_per_token']:.2f}" if kernels in by else "-"

        def same(kernels: str, by: dict = by) -> str:
            if "same_tokens" not in by.get(kernels, {}):
                return "-"
            return "yes" if by[kernels]["same_tokens"] else f"from {by[kernels]['first_mismatch']}"

        ours = by.get("quantbench", {})
        share = f"{r['bandwidth_limit_ms_per_token'] / ours['fast_ms_per_token']:.0%}" \
            if "fast_ms_per_token" in ours else "-"
        lines.append(
            f"| {r['precision']} | {r['eager_ms_per_token']:.2f} | {ms('bnb')} | {ms('quantbench')} "
            f"| {r['bandwidth_limit_ms_per_token']:.2f} | {share} | {same('bnb')} / {same('quantbench')} "
            f"| {r['target_ms_per_token']} | {'pass' if r.get('meets_target') else 'FAIL'} "
            f"| {ours.get('engine', {}).get('mode', '-')} |"
        )
    extra = [(r["precision"], k, v) for r in report["results"] for k, v in r.get("by_kernels", {}).items()
             if k not in ("bnb", "quantbench")]
    if extra:
        lines += ["", "Other kernel choices (same run, a process each):", ""]
        lines += [f"- {p} {k}: {v['fast_ms_per_token']:.2f} ms/token, same tokens: {v['same_tokens']}"
                  if "fast_ms_per_token" in v else f"- {p} {k}: {v.get('error')}" for p, k, v in extra]
    lines += ["", "Fast engine tokens/s by batch:", ""]
    for r in report["results"]:
        if "curve" in r:
            cells = ", ".join(
                f"b{p['batch']}: {p['tokens_per_s']:.0f}" if "tokens_per_s" in p
                else f"b{p['batch']}: {p['error']}" for p in r["curve"]
            )
            lines.append(f"- {r['precision']}: {cells}")
    lines += ["", "Profile, batch 1 (GPU kernel ms per token vs wall ms per token):", ""]
    for r in report["results"]:
        if p := r.get("profile_b1"):
            lines.append(
                f"- {r['precision']} ({r.get('profiled_kernels', 'quantbench')}): kernels "
                f"{p['kernel_ms_per_token']:.2f} ms in "
                f"{p['kernels_per_token']:.0f} kernels, wall {p['wall_ms_per_token']:.2f} ms"
                + (f" (unprofiled: issued in {p['unprofiled_issue_ms_per_token']:.2f}, done in "
                   f"{p['unprofiled_wall_ms_per_token']:.2f})" if "unprofiled_wall_ms_per_token" in p else "")
                + "; top: "
                + "; ".join(f"{k['name'][:36]} {k['ms_per_token']:.3f}"
                            for k in p["top_kernels"][:3])
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    args.parts = args.parts or tempfile.mkdtemp(prefix="decode_speed_")
    if args.child:
        part = Path(args.parts) / f"{args.child}.json"
        measure(args, args.child, lambda result: part.write_text(json.dumps(result, indent=1)))
        return
    import torch

    from quantbench.results import library_versions, now_iso

    if not torch.cuda.is_available():
        sys.exit("error: decode_speed needs a CUDA GPU")
    args.bandwidth = copy_bandwidth()
    report = {
        "model": args.model, "device": torch.cuda.get_device_name(), "timestamp": now_iso(),
        "versions": library_versions(), "bandwidth_bytes_per_s": args.bandwidth,
        "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
        "eager_tokens": args.eager_tokens, "repeats": args.repeats,
        "compile_mode": args.compile_mode,
        "fourbit_table": json.loads(Path(args.fourbit_table).read_text()) if args.fourbit_table else None,
        "results": [],
    }
    stem = Path(args.out) / args.name
    for name in [n.strip() for n in args.precisions.split(",") if n.strip()]:
        report["results"].append(measure_precision(args, name))
        brief = {k: v for k, v in report["results"][-1].items() if k not in ("curve", "profile_b1")}
        print(json.dumps(brief), flush=True)
        # rewritten after every precision: a run stopped by its time limit keeps the rows it has
        stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
        stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


def _int_list(text: str) -> list[int]:
    return [int(b) for b in text.split(",") if b.strip()]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="tinyllama-1.1b-arch")
    p.add_argument("--precisions", default="fp16,bf16,int8,int8-t0,nf4")
    p.add_argument("--out", default="decode-out")
    p.add_argument("--name", default="decode_speed", help="file stem of the JSON / Markdown")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128, help="N for the fast engine")
    p.add_argument("--eager-tokens", type=int, default=64, help="N for eager generate")
    p.add_argument("--curve-tokens", type=int, default=32)
    p.add_argument("--batches", type=_int_list, default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile-mode", default=None, help="torch.compile mode of the decode step")
    p.add_argument("--kernels", default="bnb,quantbench", help="fast engine kernels to compare, in order")
    p.add_argument("--timeout-s", type=int, default=150, help="per precision and kernels choice")
    p.add_argument("--fourbit-table", default=None,
                   help="4-bit launch shapes from kernels_gemv.py --sweep (its fourbit_table.json)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--bandwidth", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--parts", default=None, help=argparse.SUPPRESS)
    return p.parse_args()


if __name__ == "__main__":
    main()
