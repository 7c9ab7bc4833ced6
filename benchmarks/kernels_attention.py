"""Decode attention on the GPU: quantbench's kernel, its cache split into parts and in one part,
against transformers' SDPA call, per model shape and cache length.

    python benchmarks/kernels_attention.py --out DIR [--lengths 192,1024,4096] [--batches 1,8] [--stages 3]

For the attention of tinyllama-1.1b (32 query heads over 4 key/value heads of 64) and llama-2-7b
(32 heads of 128), a static cache of each length with every position attended, one query token
per row: us per call replayed from a CUDA graph, the calls rotating over up to 32 copies of the
cache (as in a decode step, where each layer reads its own; a short cache's copies still fit in
L2, where a decode step's weight traffic would have evicted them);
achieved bandwidth = key and value bytes / time; and the largest difference from SDPA's result.
--stages N also times both with the kernel's loop over the cache software-pipelined N steps deep
(config.pipeline_stages "attention:N"; "off": not).
Writes kernels_attention.json into --out and prints a table.
"""

from __future__ import annotations

import argparse
import json
import types

from kernels_gemv import graph_us, new_report

SHAPES = {"tinyllama": (32, 4, 64), "llama7b": (32, 32, 128)}  # query heads, key/value heads, head size


def one_case(model: str, batch: int, length: int, stages: str) -> dict:
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from quantbench.kernels import config
    from quantbench.kernels.attention import decode_attention, parts_for

    heads, kv_heads, dim = SHAPES[model]
    module = types.SimpleNamespace(num_key_value_groups=heads // kv_heads, is_causal=True)
    scale = dim**-0.5
    nbytes = 2 * batch * kv_heads * length * dim * 2
    mask = torch.ones(batch, 1, 1, length, dtype=torch.bool, device="cuda")
    caches: list[tuple] = []

    def cache(i: int) -> tuple:
        while len(caches) <= i:
            caches.append(tuple(torch.randn(batch, h, n, dim, device="cuda", dtype=torch.float16)
                                for h, n in ((heads, 1), (kv_heads, length), (kv_heads, length))))
        return caches[i]

    def ours(i: int):  # noqa: ANN202
        q, k, v = cache(i)
        return lambda: decode_attention(q, k, v, mask, scale)

    def sdpa(i: int):  # noqa: ANN202
        q, k, v = cache(i)
        return lambda: sdpa_attention_forward(module, q, k, v, mask, scaling=scale)

    q, k, v = cache(0)
    reference = sdpa(0)()[0].float()
    row = {"model": model, "batch": batch, "length": length, "bytes": nbytes}
    before = config.modes()
    variants = [("parts", "off"), ("one", "off")] + ([] if stages == "off" else [("parts", stages), ("one", stages)])
    try:
        for mode, depth in variants:
            config.set_attention_parts(mode)
            config.set_pipeline_stages(depth if depth == "off" else f"attention:{depth}")
            name = mode if depth == "off" else f"{mode}_stages{depth}"
            if mode == "parts":
                row["parts"] = parts_for(batch, heads, length)[0]
            row[f"max_diff_{name}"] = float((ours(0)().float() - reference).abs().max())
            row[f"{name}_us"] = graph_us(ours, nbytes)
    finally:
        config.set_modes(before)
    row["sdpa_us"] = graph_us(sdpa, nbytes)
    caches.clear()
    torch.cuda.empty_cache()
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="kernels-out")
    p.add_argument("--models", default="tinyllama,llama7b")
    p.add_argument("--lengths", default="192,1024,4096")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--stages", default="off", choices=("off", "2", "3", "4"))
    args = p.parse_args()
    import torch

    report, out = new_report(args.out)
    with torch.no_grad():
        for model in args.models.split(","):
            for batch in map(int, args.batches.split(",")):
                for length in map(int, args.lengths.split(",")):
                    report["rows"].append(one_case(model, batch, length, args.stages))
                    (out / "kernels_attention.json").write_text(json.dumps(report, indent=1))
                    print(json.dumps(report["rows"][-1]), flush=True)
    bw = report["copy_bandwidth_bytes_per_s"] / 1e12
    print(f"\ncopy bandwidth {bw:.2f} TB/s; us per call in a CUDA graph, cold L2 (TB/s of keys and values)")
    timed = [key for key in report["rows"][0] if key.endswith("_us")] if report["rows"] else []
    print(f"{'model':9} {'batch':>5} {'length':>6} {'parts':>5} "
          + " ".join(f"{key.removesuffix('_us'):>15}" for key in timed) + " max diff")
    for r in report["rows"]:
        cells = [f"{r[key]:7.1f} ({r['bytes'] / r[key] / 1e6:.2f})" for key in timed]
        print(f"{r['model']:9} {r['batch']:5} {r['length']:6} {r['parts']:5} " + " ".join(f"{c:>15}" for c in cells)
              + f" {max(v for k, v in r.items() if k.startswith('max_diff')):.1e}")


if __name__ == "__main__":
    main()
