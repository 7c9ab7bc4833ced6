"""GEMV kernels on the GPU: correctness against bitsandbytes, then time per shape and launch shape.

    python benchmarks/kernels_gemv.py --out DIR [--models tinyllama,llama7b] [--sweep]

For every linear shape of the models (q/k/v and gate/up merged as the engine merges them) and
every format (fp16, bf16, nf4, nf4-dq, int8 threshold 0, int8 threshold 6; "-norm": the kernel
reads its row RMSNorm-ed, as the engine's q/k/v and gate/up launches do; "-act": silu(gate) * up
of a [gate | up] row, as its down_proj launches do; "-once": that row work
done in a kernel of its own first, config.row_prologue "once"; "-once-early": and the outlier
list's weights gathered before the int8 dot, config.int8_list_gather; "-shuffle" / "-shared": the
4-bit codes looked up by warp shuffles (the default) or from shared memory, config.set_fourbit_gather;
"-stages3": the kernel's K-loop software-pipelined three steps deep, config.pipeline_stages;
"-xsplit" / "-xdirect": the 4-bit activation exchanged as split fp32 values, or read by every
thread from memory, not exchanged as 32-bit words of 16-bit pairs, config.fourbit_activation;
"-column": the 4-bit K-step's tiles ordered [blocks, rows, bytes], config.fourbit_tile):
  check  quantbench's kernel against bitsandbytes' own functions on fresh random data:
         int8 threshold 0 must equal Linear8bitLt's forward bit for bit; 4-bit is compared with
         dequantize_4bit + an fp32 matmul (relative error), and bitsandbytes' gemv_4bit beside it;
  time   triton.testing.do_bench medians (L2 flushed before each call) of our kernel (the
         table's launch shape, and with --sweep every candidate), bitsandbytes' kernel for that
         format and cuBLAS on 16-bit weights; achieved bandwidth = weight bytes / time; and our
         kernel's device time per launch as torch.profiler records it.
Writes kernels_gemv.json into --out and prints a table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
from pathlib import Path

SHAPES = {  # name -> (N, K) per linear launch; q/k/v and gate/up merged
    "tinyllama": {"qkv": (2560, 2048), "o": (2048, 2048), "gate_up": (11264, 2048), "down": (2048, 5632),
                  "lm_head": (32000, 2048)},
    "llama7b": {"qkv": (12288, 4096), "o": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008),
                "lm_head": (32000, 4096)},
}
SWEEP = {  # (BLOCK_N, BLOCK_K, warps, SPLIT); SPLIT 0: config.py's rule
    "dense": [(*s, 1) for s in itertools.product((2, 4, 8), (512, 1024, 2048), (4, 8))],
    "4bit": list(itertools.product((4, 8, 16), (256, 512, 1024, 2048), (4, 8), (0,))),
    "int8": [(*s, 1) for s in itertools.product((4, 8, 16), (1024, 2048), (4, 8))],
}
# 4-bit variants: code lookup (per byte / per nibble from shared memory) x activation as int32 pairs
# (True: no layout exchange, 2-6 barriers per K-step in the machine code) or split (False: 20-24);
# the lookup from L1 ("global") only with pairs (split, it compiled to the most instructions)
GATHERS = {"dense": (None,), "int8": (None,),
           "4bit": (("bytes", False), ("shared", False), ("bytes", True), ("shared", True), ("global", True),
                    ("shuffle", False))}
STAGES: list[str | None] = [None]  # pipeline depths the sweep tries (--stages); None: the format's own
OURS = ("_dense", "_fourbit", "_sum_splits", "_int8")


def bench(fn) -> float:  # noqa: ANN001
    import triton

    return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median") * 1e3  # us


def graph_us(make, nbytes: int, calls: int = 64) -> float:  # noqa: ANN001
    """us per call of make(copy)() replayed from one CUDA graph, the calls rotating over enough
    copies of the weights (>= 160 MB) that none is in L2 when read, as in a decode step."""
    import torch

    copies = max(1, min(32, -(-(160 << 20) // max(1, nbytes))))
    fns = [make(i) for i in range(copies)]
    for fn in fns:
        fn()  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fns[i % copies]()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(5):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return sorted(times)[len(times) // 2]


def profiled_us(fn) -> float | None:  # noqa: ANN001
    """Device time of our kernels per call as torch.profiler records it (L2 flushed between);
    a call may be two launches (split-K's sum, LLM.int8's outlier set)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    flush = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            flush.zero_()
            fn()
        torch.cuda.synchronize()
    ours = [e for e in prof.key_averages() if e.key.startswith(OURS)]
    return sum(e.self_device_time_total for e in ours) / 20 if ours else None


def _pipeline_depth(fmt: str) -> tuple[str, str | None]:
    """A format name without its "-stagesN" part (anywhere in the name), and N."""
    found = re.search(r"-stages(\d)(?=-|$)", fmt)
    return (fmt[:found.start()] + fmt[found.end():], found.group(1)) if found else (fmt, None)


def build(fmt: str, n: int, k: int) -> dict:
    """One fresh weight matrix in `fmt`: our call, bitsandbytes' (or cuBLAS) call, bytes, and the
    check of ours against the reference."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf
    import torch

    from quantbench.kernels import gemv
    from quantbench.kernels.config import fourbit_gather
    from quantbench.kernels.fourbit import LOOKUPS, code_table

    fmt = _pipeline_depth(fmt)[0]
    # one_shape's modes
    modes = ("-shuffle", "-shared", "-early", "-prefetch", "-pdl", "-once", "-xsplit", "-xdirect", "-column")
    while fmt.endswith(modes):  # in any order, e.g. nf4-norm-once-xdirect
        fmt = next(fmt.removesuffix(mode) for mode in modes if fmt.endswith(mode))
    dtype = torch.bfloat16 if "bf16" in fmt else torch.float16
    w = torch.randn(n, k, device="cuda", dtype=dtype) * 0.02
    # "-norm": ours reads x RMSNorm-ed (weight 1, so the torch row below is the kernel's exactly
    # but for the rsqrt's last bit); "-act": ours reads silu(gate) * up of a [gate | up] row, as
    # the engine's down_proj launches do; the references read the finished row
    norm = {"norm": (torch.ones(k, device="cuda", dtype=dtype), 1e-5)} if fmt.endswith("-norm") else {}
    if fmt.endswith("-act"):
        norm = {"act": True}
    fmt = fmt.removesuffix("-norm").removesuffix("-act")
    xin = torch.randn(1, 2 * k if "act" in norm else k, device="cuda", dtype=dtype)

    def normed(row):  # noqa: ANN001, ANN202
        if "act" in norm:  # torch's rounding: silu in the dtype, then the product in the dtype
            return torch.nn.functional.silu(row[..., :k]) * row[..., k:]
        if "norm" in norm:
            return (row.float() * torch.rsqrt(row.float().pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype)
        return row

    x = normed(xin)
    item: dict = {"cublas": lambda: torch.nn.functional.linear(x, w), "check": {}}
    if fmt in ("fp16", "bf16"):
        item |= {"kind": "dense", "bytes": w.numel() * 2, "ours": lambda: gemv.gemv_dense(xin, w, **norm),
                 "theirs": item["cublas"]}
        ref = x.double() @ w.double().T
        item["check"]["rel_err"] = float((item["ours"]().double() - ref).norm() / ref.norm())
    elif fmt.startswith("nf4"):
        packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4",
                                           compress_statistics=fmt.startswith("nf4-dq"))
        absmax = state.absmax
        if state.nested:  # expanded once, as the engine does at install
            absmax = (bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset).float()
        code = code_table(state.code, LOOKUPS[fourbit_gather()])  # built once, as the engine does
        item |= {"kind": "4bit", "bytes": packed.numel() + state.absmax.numel() * state.absmax.element_size(),
                 "ours": lambda: gemv.gemv_4bit(xin, packed, absmax, code, n, 64, **norm),
                 "theirs": lambda: bnb.matmul_4bit(x, packed, state)}  # gemv_4bit at one row
        ref = x.double() @ bnbf.dequantize_4bit(packed, state).to(dtype).double().T
        for key, fn in (("rel_err", item["ours"]), ("bnb_rel_err", item["theirs"])):
            item["check"][key] = float((fn().double() - ref).norm() / ref.norm())
        # how far from bitsandbytes' own gemv_4bit output (nf4-bnbmath: its roundings)
        item["check"]["vs_bnb_max_abs_diff"] = float((item["ours"]().float() - item["theirs"]().float()).abs().max())
    else:
        threshold = 6.0 if "t6" in fmt else 0.0
        layer = bnb.nn.Linear8bitLt(k, n, bias=False, has_fp16_weights=False, threshold=threshold)
        layer.weight = bnb.nn.Int8Params(w.cpu(), requires_grad=False, has_fp16_weights=False)
        layer = layer.cuda().eval()
        with torch.no_grad():
            layer(x)  # moves CB/SCB into the state
        cb, scb = layer.state.CB, layer.state.SCB
        if threshold and "clean" not in fmt:  # int8-t6-clean: the threshold's cost without outliers
            xin[0, torch.randperm(k, device="cuda")[:8]] = 8.0  # a few outlier features (~7.5 normed)
            x = normed(xin)
        item |= {"kind": "int8", "bytes": cb.numel() + scb.numel() * 4, "capturable": not threshold,
                 "ours": lambda: gemv.gemv_int8(xin, cb, scb, threshold, **norm),
                 "theirs": lambda: layer(x)}
        with torch.no_grad():
            expected = item["theirs"]()
        got = item["ours"]()
        item["check"] |= {"bit_exact": bool(torch.equal(got, expected)),
                          "max_abs_diff": float((got.float() - expected.float()).abs().max()),
                          "rel_err": float((got.float() - expected.float()).norm() / expected.float().norm())}
    return item


def one_shape(fmt: str, n: int, k: int, sweep: bool) -> dict:
    import torch

    from quantbench.kernels.config import (
        config_for,
        fourbit_gather,
        fourbit_pairs,
        modes,
        set_config,
        set_fourbit_gather,
        set_fourbit_pairs,
        set_modes,
        set_pipeline_stages,
    )

    named, depth = _pipeline_depth(fmt)
    # int8-t6-skip: LLM.int8's outlier term by the pass that tests each chunk (the default is the
    # masked pass); nf4-bnbmath: the 4-bit kernel with bitsandbytes' roundings; nf4-bnbmath-regs:
    # and its register lookup; "-pdl" / "-prefetch": each launch overlapping the one before it
    defaults = modes()
    set_modes({
        "launch_overlap": "prefetch" if "prefetch" in fmt else "launch" if "pdl" in fmt else defaults["launch_overlap"],
        "int8_outlier_pass": "skip" if "skip" in fmt else defaults["int8_outlier_pass"],
        "4bit_numerics": "bitsandbytes" if "bnbmath" in fmt else defaults["4bit_numerics"],
        "4bit_lookup": "registers" if "regs" in fmt else "shuffle" if "shuffle" in fmt else "shared" if "shared" in fmt
                       else defaults["4bit_lookup"],
        "row_prologue": "once" if "-once" in fmt else defaults["row_prologue"],
        "int8_list_gather": "early" if named.endswith("-early") else defaults["int8_list_gather"],
        "pipeline_stages": depth or defaults["pipeline_stages"],
        "4bit_activation": "split" if "-xsplit" in fmt else "direct" if "-xdirect" in fmt
                           else defaults["4bit_activation"],
        "4bit_tile": "column" if "-column" in fmt else defaults["4bit_tile"],
    })
    items: list[dict] = []

    def make(role: str):  # noqa: ANN202
        def copy(i: int):  # noqa: ANN202
            while len(items) <= i:
                items.append(build(fmt, n, k))
            return items[i][role]
        return copy

    first = build(fmt, n, k)
    items.append(first)
    kind, nbytes = first["kind"], first["bytes"]
    row: dict = {"format": fmt, "N": n, "K": k, **first["check"], "weight_bytes": nbytes,
                 "config": config_for(kind if kind != "4bit" else "4bit64", n, k)}
    with torch.no_grad():
        row["ours_us"] = graph_us(make("ours"), nbytes)
        if first.get("capturable", True):
            row["bnb_us"] = graph_us(make("theirs"), nbytes)
        else:  # bitsandbytes' outlier path syncs with the host: no graph; do_bench, L2 flushed
            row["bnb_us_eager"] = bench(first["theirs"])
        row["cublas_us"] = graph_us(make("cublas"), nbytes * (2 if kind == "4bit" else 1))
        row["profiler_us"] = profiled_us(first["ours"])
    row["ours_tb_s"] = nbytes / row["ours_us"] / 1e6
    row["profiler_tb_s"] = nbytes / row["profiler_us"] / 1e6 if row["profiler_us"] else None
    if "bnb_us" in row:
        row["bnb_tb_s"] = nbytes / row["bnb_us"] / 1e6
    if sweep:
        before = fourbit_gather(), fourbit_pairs()
        times = {}
        with torch.no_grad():
            for shape, gather, stages in itertools.product(SWEEP[kind], GATHERS[kind], STAGES):
                set_config(kind, shape)
                set_fourbit_gather(gather[0] if gather else before[0])
                set_fourbit_pairs(gather[1] if gather else before[1])
                if stages is not None:
                    set_pipeline_stages(stages)
                key = str(shape) + (f" {gather[0]} {'pairs' if gather[1] else 'split'}" if gather else "")
                key += f" stages={stages}" if stages is not None else ""
                try:
                    times[key] = graph_us(make("ours"), nbytes, calls=32)
                except Exception as err:  # a shape Triton cannot build is a result too
                    times[key] = f"{type(err).__name__}"
        set_config(kind, None)
        set_fourbit_gather(before[0])
        set_fourbit_pairs(before[1])
        ok = {s: t for s, t in times.items() if isinstance(t, float)}
        row["sweep_us"] = times
        row["best"] = min(ok, key=ok.get) if ok else None
        row["best_us"] = ok[row["best"]] if ok else None
    items.clear()
    set_modes(defaults)
    torch.cuda.empty_cache()
    return row


def new_report(folder: str) -> tuple[dict, Path]:
    """The header every kernel benchmark's JSON starts with (device, date, versions, copy
    bandwidth; rows to come), and its output folder, made."""
    import torch

    from quantbench.measure.memory import copy_bandwidth_bytes_per_s
    from quantbench.results import library_versions, now_iso

    torch.manual_seed(0)
    report = {"device": torch.cuda.get_device_name(), "timestamp": now_iso(), "versions": library_versions(),
              "copy_bandwidth_bytes_per_s": copy_bandwidth_bytes_per_s("cuda"), "rows": []}
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    return report, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="kernels-out")
    p.add_argument("--models", default="tinyllama,llama7b")
    p.add_argument("--formats", default="fp16,bf16,nf4,nf4-dq,int8-t0,int8-t0-bf16,int8-t6")
    p.add_argument("--sweep", action="store_true", help="also time every candidate launch shape")
    p.add_argument("--lookups", default=None,
                   help="the 4-bit lookups the sweep tries, e.g. shuffle or shared,shuffle (default: all)")
    p.add_argument("--shapes", default=None, help="only these launches, e.g. o,down (default: every one)")
    p.add_argument("--candidates", default=None,
                   help="the launch shapes the sweep tries instead of its own, BLOCK_N x BLOCK_K x warps x SPLIT "
                        "(SPLIT 0: config.py's rule), e.g. 8x2048x8x0,8x1024x8x2")
    p.add_argument("--stages", default=None,
                   help="pipeline depths the sweep tries, e.g. off,2,3 (config.pipeline_stages; default: the "
                        "format's own)")
    args = p.parse_args()
    if args.stages:
        STAGES[:] = args.stages.split(",")
        if unknown := set(STAGES) - {"off", "2", "3", "4"}:
            raise SystemExit(f"unknown pipeline depth(s): {', '.join(sorted(unknown))}")
    if args.lookups:
        wanted = args.lookups.split(",")
        if unknown := set(wanted) - {gather for gather, _ in GATHERS["4bit"]}:
            raise SystemExit(f"unknown 4-bit lookup(s): {', '.join(sorted(unknown))}")
        GATHERS["4bit"] = tuple(g for g in GATHERS["4bit"] if g[0] in wanted)
    if args.candidates:
        try:
            shapes = [tuple(int(v) for v in c.split("x")) for c in args.candidates.split(",")]
        except ValueError:
            shapes = []
        if not shapes or any(len(shape) != 4 for shape in shapes):
            raise SystemExit(f"--candidates: BLOCK_NxBLOCK_KxWARPSxSPLIT, comma-separated, not {args.candidates!r}")
        for kind in SWEEP:
            SWEEP[kind] = shapes
    launches = set(args.shapes.split(",")) if args.shapes else set(SHAPES["llama7b"])
    if unknown := launches - set(SHAPES["llama7b"]):  # both models have the same launches
        raise SystemExit(f"unknown launch(es): {', '.join(sorted(unknown))}; one of {', '.join(SHAPES['llama7b'])}")
    report, out = new_report(args.out)
    for model in args.models.split(","):
        for fmt in args.formats.split(","):
            for name, (n, k) in SHAPES[model].items():
                if name not in launches:
                    continue
                if name == "lm_head" and fmt.startswith("nf4"):
                    continue  # bitsandbytes leaves lm_head unquantized: the dense kernel serves it
                row = {"model": model, "shape": name, **one_shape(fmt, n, k, args.sweep)}
                report["rows"].append(row)
                (out / "kernels_gemv.json").write_text(json.dumps(report, indent=1))
                print(json.dumps({k: v for k, v in row.items() if k != "sweep_us"}), flush=True)
                if args.sweep:  # a time limit that stops the sweep still leaves a table
                    suggest(report["rows"], out / "fourbit_table.json", show=False)
    bw = report["copy_bandwidth_bytes_per_s"] / 1e12
    print(f"\ncopy bandwidth {bw:.2f} TB/s; us per call in a CUDA graph, cold L2 (TB/s)")
    print(f"{'model':9} {'fmt':12} {'shape':7} {'ours':>13} {'profiler':>13} {'bnb':>13} {'cublas':>6} "
          f"{'best sweep':>24} check")
    for r in report["rows"]:
        check = r.get("bit_exact", f"{r['rel_err']:.1e}")
        best = f"{r.get('best')} {r.get('best_us') or 0:.1f}" if "best" in r else ""
        prof = f"{r['profiler_us']:6.1f} ({r['profiler_tb_s']:.2f})" if r["profiler_us"] else "-"
        bnb = f"{r['bnb_us']:6.1f} ({r['bnb_tb_s']:.2f})" if "bnb_us" in r else f"{r['bnb_us_eager']:.0f} eager"
        print(f"{r['model']:9} {r['format']:12} {r['shape']:7} {r['ours_us']:6.1f} ({r['ours_tb_s']:.2f}) "
              f"{prof:>13} {bnb:>13} {r['cublas_us']:6.1f} {best:>24} {check}")
    suggest(report["rows"], out / "fourbit_table.json")


def suggest(rows: list[dict], path: Path, show: bool = True) -> None:
    """The sweep's winners as config.py would take them: per (N, K) the best launch shape in the
    lookup/layout that is fastest over all 4-bit shapes together (config's modes are global).
    Also written to `path`, which decode_speed.py --fourbit-table applies before it measures."""
    import ast

    swept = [r for r in rows if r.get("sweep_us") and r["format"].startswith("nf4")]
    if not swept:
        return
    modes = {key.split(")")[1].strip() for r in swept for key in r["sweep_us"]}

    def best(r: dict, mode: str) -> float:
        return min((t for k, t in r["sweep_us"].items() if k.endswith(mode) and isinstance(t, float)),
                   default=float("inf"))

    totals = {mode: sum(best(r, mode) for r in swept) for mode in modes}
    mode = min(totals, key=totals.get)
    table = {}
    for r in swept:
        ok = {k: v for k, v in r["sweep_us"].items() if k.endswith(mode) and isinstance(v, float)}
        table[(r["N"], r["K"])] = ast.literal_eval(min(ok, key=ok.get).split(")")[0] + ")")
    if show:
        print(f"\n4-bit: fastest lookup/layout over all shapes: {mode} (sum of best us: "
              + ", ".join(f"{m} {t:.0f}" for m, t in sorted(totals.items(), key=lambda kv: kv[1])) + ")")
        print(f"FOURBIT = {table}  # (BLOCK_N, BLOCK_K, warps, SPLIT; 0 = config's rule)")
    gather, layout, *depth = mode.split()
    chosen = {"gather": gather, "pairs": layout == "pairs",
              "table": [[n, k, list(shape)] for (n, k), shape in table.items()]}
    if depth:  # swept over pipeline depths: "stages=3" or "stages=off"
        stages = depth[0].split("=")[1]
        chosen["stages"] = None if stages == "off" else int(stages)
    path.write_text(json.dumps(chosen))


if __name__ == "__main__":
    main()
