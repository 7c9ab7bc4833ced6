"""GEMV kernels on the GPU: correctness against bitsandbytes, then time per shape and launch shape.

    python benchmarks/kernels_gemv.py --out DIR [--models tinyllama,llama7b] [--sweep]

For every linear shape of the models (q/k/v and gate/up merged as the engine merges them) and
every format (fp16, bf16, nf4, nf4-dq, int8 threshold 0, int8 threshold 6):
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
from pathlib import Path

SHAPES = {  # name -> (N, K) per linear launch; q/k/v and gate/up merged
    "tinyllama": {"qkv": (2560, 2048), "o": (2048, 2048), "gate_up": (11264, 2048), "down": (2048, 5632),
                  "lm_head": (32000, 2048)},
    "llama7b": {"qkv": (12288, 4096), "o": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008),
                "lm_head": (32000, 4096)},
}
SWEEP = {
    "dense": list(itertools.product((4, 8, 16), (256, 512, 1024), (4, 8))),
    "4bit": list(itertools.product((4, 8, 16), (512, 1024, 2048), (4, 8))),
    "int8": list(itertools.product((4, 8, 16), (512, 1024, 2048), (4, 8))),
}


def bench(fn) -> float:  # noqa: ANN001
    import triton

    return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median") * 1e3  # us


def profiled_us(fn) -> float | None:  # noqa: ANN001
    """Device time of our kernel per launch as torch.profiler records it (L2 flushed between)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    flush = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            flush.zero_()
            fn()
        torch.cuda.synchronize()
    ours = [e for e in prof.key_averages() if e.key.startswith(("_dense", "_fourbit", "_int8"))]
    return sum(e.self_device_time_total for e in ours) / max(1, sum(e.count for e in ours)) if ours else None


def one_shape(fmt: str, n: int, k: int, sweep: bool) -> dict:
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf
    import torch

    from quantbench.kernels import gemv
    from quantbench.kernels.config import set_config, set_fourbit_factored

    dtype = torch.bfloat16 if "bf16" in fmt else torch.float16
    x = torch.randn(1, k, device="cuda", dtype=dtype)
    w = torch.randn(n, k, device="cuda", dtype=dtype) * 0.02
    row: dict = {"format": fmt, "N": n, "K": k}
    cublas = w.to(dtype)
    if fmt in ("fp16", "bf16"):
        kind, nbytes = "dense", w.numel() * 2
        ours = lambda: gemv.gemv_dense(x, w)  # noqa: E731
        theirs = lambda: torch.nn.functional.linear(x, w)  # noqa: E731
        ref = x.double() @ w.double().T
        row["rel_err"] = float((ours().double() - ref).norm() / ref.norm())
    elif fmt.startswith("nf4"):
        kind = "4bit"
        set_fourbit_factored(fmt.endswith("factored"))
        packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4",
                                           compress_statistics=fmt.startswith("nf4-dq"))
        absmax = state.absmax
        if state.nested:
            absmax = (bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset).float()
        nbytes = packed.numel() + state.absmax.numel() * state.absmax.element_size()
        code = state.code.float()
        ours = lambda: gemv.gemv_4bit(x, packed, absmax, code, n, 64)  # noqa: E731
        theirs = lambda: bnb.matmul_4bit(x, packed, state)  # noqa: E731  (gemv_4bit at one row)
        ref = x.double() @ bnbf.dequantize_4bit(packed, state).to(dtype).double().T
        row["rel_err"] = float((ours().double() - ref).norm() / ref.norm())
        row["bnb_rel_err"] = float((theirs().double() - ref).norm() / ref.norm())
    else:
        kind = "int8"
        threshold = 6.0 if "t6" in fmt else 0.0
        layer = bnb.nn.Linear8bitLt(k, n, bias=False, has_fp16_weights=False, threshold=threshold)
        layer.weight = bnb.nn.Int8Params(w.cpu(), requires_grad=False, has_fp16_weights=False)
        layer = layer.cuda().eval()
        with torch.no_grad():
            layer(x)  # moves CB/SCB into the state
        cb, scb = layer.state.CB, layer.state.SCB
        nbytes = cb.numel() + scb.numel() * 4
        if threshold:
            x[0, torch.randperm(k, device="cuda")[:8]] = 8.0  # a few outlier features
        ours = lambda: gemv.gemv_int8(x, cb, scb, threshold)  # noqa: E731
        theirs = lambda: layer(x)  # noqa: E731
        with torch.no_grad():
            expected = theirs()
        got = ours()
        row["bit_exact"] = bool(torch.equal(got, expected))
        row["max_abs_diff"] = float((got.float() - expected.float()).abs().max())
        row["rel_err"] = float((got.float() - expected.float()).norm() / expected.float().norm())
    with torch.no_grad():
        row["ours_us"] = bench(ours)
        row["bnb_us"] = bench(theirs)
        row["cublas_us"] = bench(lambda: torch.nn.functional.linear(x, cublas))
    row["profiler_us"] = profiled_us(ours)
    row["weight_bytes"] = nbytes
    row["ours_tb_s"] = nbytes / row["ours_us"] / 1e6
    row["profiler_tb_s"] = nbytes / row["profiler_us"] / 1e6 if row["profiler_us"] else None
    row["bnb_tb_s"] = nbytes / row["bnb_us"] / 1e6
    if sweep:
        times = {}
        for shape in SWEEP[kind]:
            set_config(kind, shape)
            try:
                times[str(shape)] = bench(ours)
            except Exception as err:  # a shape Triton cannot build is a result too
                times[str(shape)] = f"{type(err).__name__}"
        set_config(kind, None)
        ok = {s: t for s, t in times.items() if isinstance(t, float)}
        row["sweep_us"] = times
        row["best"] = min(ok, key=ok.get) if ok else None
        row["best_us"] = ok[row["best"]] if ok else None
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="kernels-out")
    p.add_argument("--models", default="tinyllama,llama7b")
    p.add_argument("--formats", default="fp16,bf16,nf4,nf4-factored,nf4-dq,int8-t0,int8-t0-bf16,int8-t6")
    p.add_argument("--sweep", action="store_true", help="also time every candidate launch shape")
    args = p.parse_args()
    import torch

    from quantbench.measure.memory import copy_bandwidth_bytes_per_s
    from quantbench.results import library_versions, now_iso

    torch.manual_seed(0)
    report = {"device": torch.cuda.get_device_name(), "timestamp": now_iso(), "versions": library_versions(),
              "copy_bandwidth_bytes_per_s": copy_bandwidth_bytes_per_s("cuda"), "rows": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for model in args.models.split(","):
        for fmt in args.formats.split(","):
            for name, (n, k) in SHAPES[model].items():
                row = {"model": model, "shape": name, **one_shape(fmt, n, k, args.sweep)}
                report["rows"].append(row)
                (out / "kernels_gemv.json").write_text(json.dumps(report, indent=1))
                print(json.dumps({k: v for k, v in row.items() if k != "sweep_us"}), flush=True)
    bw = report["copy_bandwidth_bytes_per_s"] / 1e12
    print(f"\ncopy bandwidth {bw:.2f} TB/s; us (TB/s)")
    print(f"{'model':10} {'fmt':8} {'shape':8} {'ours':>14} {'profiler':>14} {'bnb':>14} {'cublas':>7} "
          f"{'best sweep':>22} check")
    for r in report["rows"]:
        check = r.get("bit_exact", f"{r['rel_err']:.1e}")
        best = f"{r.get('best')} {r.get('best_us') or 0:.1f}" if "best" in r else ""
        prof = f"{r['profiler_us']:7.1f} ({r['profiler_tb_s']:.2f})" if r["profiler_us"] else "-"
        print(f"{r['model']:10} {r['format']:8} {r['shape']:8} {r['ours_us']:7.1f} ({r['ours_tb_s']:.2f}) "
              f"{prof:>14} {r['bnb_us']:7.1f} ({r['bnb_tb_s']:.2f}) {r['cublas_us']:7.1f} {best:>22} {check}")


if __name__ == "__main__":
    main()
