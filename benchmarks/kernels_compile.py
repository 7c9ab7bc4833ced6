"""Compile every decode kernel variant for an H100 (sm_90) without a GPU, and read the costs off
the machine code: registers, spills, shared memory, barriers, global load widths, instructions.

    python benchmarks/kernels_compile.py [--out DIR]

Triton compiles for a named target with its own ptxas; cuobjdump (shipped with Triton) gives the
SASS. This catches what Triton's CPU interpreter cannot (a construct the GPU backend rejects,
inline PTX, layouts that spill) and answers the first questions about speed before any device
time: are the packed-weight loads 16 bytes wide, how many barriers does a K-step hold, does any
array live in local memory, does a pipelined loop copy its steps ahead (LDGSTS). Writes
kernels_compile.json into --out and prints a table.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
from pathlib import Path

# argument name -> Triton type, per kernel family; the rest are i32 (fp32 where named below)
FLOATS = {"eps", "threshold", "scale"}
POINTERS = {
    "dense": {"x_ptr": "*fp16", "w_ptr": "*fp16", "bias_ptr": "*fp16", "nw_ptr": "*fp16", "res_ptr": "*fp16",
              "out_ptr": "*fp16"},
    "4bit": {"x_ptr": "*fp16", "w_ptr": "*u8", "absmax_ptr": "*fp32", "code_ptr": "*fp32", "bias_ptr": "*fp32",
             "nw_ptr": "*fp16", "res_ptr": "*fp16", "out_ptr": "*fp16"},
    "4bit-bytes": {"x_ptr": "*fp16", "w_ptr": "*u8", "absmax_ptr": "*fp32", "code_ptr": "*i64",
                   "bias_ptr": "*fp32", "nw_ptr": "*fp16", "res_ptr": "*fp16", "out_ptr": "*fp16"},
    "sum": {"part_ptr": "*fp32", "bias_ptr": "*fp32", "res_ptr": "*fp16", "out_ptr": "*fp16"},
    "int8": {"x_ptr": "*fp16", "w_ptr": "*i8", "scb_ptr": "*fp32", "bias_ptr": "*fp32", "nw_ptr": "*fp16",
             "res_ptr": "*fp16", "out_ptr": "*fp16", "q_ptr": "*i8", "stat_ptr": "*fp32", "idx_ptr": "*i32",
             "val_ptr": "*fp32", "count_ptr": "*i32"},
    "rows": {"x_ptr": "*fp16", "nw_ptr": "*fp16", "out_ptr": "*fp16"},
    "attention": {"q_ptr": "*fp16", "k_ptr": "*fp16", "v_ptr": "*fp16", "mask_ptr": "*u8", "out_ptr": "*fp16",
                  "part_ptr": "*fp32", "max_ptr": "*fp32", "sum_ptr": "*fp32", "count_ptr": "*i32"},
    "rope": {"q_ptr": "*fp16", "k_ptr": "*fp16", "v_ptr": "*fp16", "cos_ptr": "*fp16", "sin_ptr": "*fp16",
             "keys_ptr": "*fp16", "values_ptr": "*fp16", "length_ptr": "*i64", "out_ptr": "*fp16"},
}


def variants() -> list[tuple[str, str, object, dict, int]]:
    """(name, family, kernel, constexprs, warps) for every variant the engine can launch."""
    from quantbench.kernels import attention, fourbit, gemv, int8, prologue, rope

    out = []
    for pro in (0, 1, 2):
        out.append((f"dense pro={pro} res={pro == 2}", "dense", gemv._dense_kernel,
                    {"HAS_BIAS": False, "PRO": pro, "RES": pro == 2, "BLOCK_N": 4, "BLOCK_K": 1024}, 4))
    for pairs in (True, False):
        for lookup, table in enumerate(("global", "shared", "bytes")):
            for pro in (0, 1, 2):
                name = f"4bit {'pairs' if pairs else 'split'} {table} pro={pro}"
                out.append((name, "4bit-bytes" if lookup == 2 else "4bit", fourbit._fourbit_kernel,
                            {"HAS_BIAS": False, "BLOCKSIZE": 64, "SPLIT": 1, "LOOKUP": lookup, "PRO": pro,
                             "RES": pro == 2, "PAIRS": pairs, "BLOCK_N": 8, "BLOCK_K": 512}, 4))
    for pairs in (False, True):  # the codes by warp shuffles, at the engine's launch shape for llama-2-7b
        for pro in (0, 2):
            out.append((f"4bit {'pairs' if pairs else 'split'} shuffle pro={pro}", "4bit", fourbit._fourbit_kernel,
                        {"HAS_BIAS": False, "BLOCKSIZE": 64, "SPLIT": 1, "LOOKUP": 4, "PRO": pro, "RES": pro == 2,
                         "PAIRS": pairs, "BLOCK_N": 4, "BLOCK_K": 1024}, 4))
    for pro in (0, 1, 2):  # the default: the activation crosses as 32-bit words of pairs (config.fourbit_activation)
        out.append((f"4bit split shuffle pro={pro}, x as words", "4bit", fourbit._fourbit_kernel,
                    {"HAS_BIAS": False, "BLOCKSIZE": 64, "SPLIT": 1, "LOOKUP": 4, "PRO": pro, "RES": pro == 2,
                     "PAIRS": False, "BLOCK_N": 4, "BLOCK_K": 1024, "WORDS": True}, 4))
    for block_n in (4, 8):  # config.fourbit_tile "column", at llama-2-7b's 2048-column steps, beside "row"
        for column in (False, True):
            out.append((f"4bit split shuffle pro=0, x as words, {block_n} rows x 2048, "
                        f"{'column' if column else 'row'} tile", "4bit", fourbit._fourbit_kernel,
                        {"HAS_BIAS": False, "BLOCKSIZE": 64, "SPLIT": 1, "LOOKUP": 4, "PRO": 0, "RES": False,
                         "PAIRS": False, "BLOCK_N": block_n, "BLOCK_K": 2048, "WORDS": True, "COLUMN": column}, 4))
    out.append(("4bit split shuffle pro=0, x read directly", "4bit", fourbit._fourbit_kernel,  # fourbit_activation
                {"HAS_BIAS": False, "BLOCKSIZE": 64, "SPLIT": 1, "LOOKUP": 4, "PRO": 0, "RES": False,
                 "PAIRS": False, "BLOCK_N": 4, "BLOCK_K": 1024, "DIRECT": True}, 4))
    for lookup, table in ((1, "shared"), (3, "registers")):  # bitsandbytes' roundings
        for pro in (0, 2):
            out.append((f"4bit split {table} bnb-rounding pro={pro}", "4bit", fourbit._fourbit_kernel,
                        {"HAS_BIAS": False, "BLOCKSIZE": 64, "SPLIT": 1, "LOOKUP": lookup, "PRO": pro,
                         "RES": pro == 2, "PAIRS": False, "BLOCK_N": 4, "BLOCK_K": 1024, "BNB": True,
                         "WORDS": True}, 4))
    out.append(("4bit split-K partials", "4bit-bytes", fourbit._fourbit_kernel,
                {"HAS_BIAS": False, "BLOCKSIZE": 64, "SPLIT": 2, "LOOKUP": 2, "PRO": 0, "RES": False,
                 "PAIRS": False, "BLOCK_N": 8, "BLOCK_K": 512}, 4))
    out.append(("4bit split-K sum", "sum", fourbit._sum_splits,
                {"HAS_BIAS": False, "RES": True, "SPLIT": 2, "BLOCK": 1024}, 4))
    for outliers, skip in ((False, True), (True, True), (True, False)):
        for pro in (0, 1, 2):
            label = ("outliers " + ("skip" if skip else "masked")) if outliers else "t=0"
            out.append((f"int8 {label} pro={pro}", "int8", int8._int8_kernel,
                        {"HAS_BIAS": False, "APPROX_DIV": True, "PRO": pro, "RES": pro == 2, "OUTLIERS": outliers,
                         "BLOCK_N": 8, "BLOCK_K": 1024, "SKIP_CHUNKS": skip}, 4))
    for outliers in (False, True):  # the row work done once (config.rows_once): its kernels
        label = "outliers" if outliers else "t=0"
        out.append((f"int8 {label}, reading the row's codes", "int8", int8._int8_kernel,
                    {"HAS_BIAS": False, "APPROX_DIV": True, "PRO": 0, "RES": True, "OUTLIERS": outliers,
                     "BLOCK_N": 8, "BLOCK_K": 1024, "SKIP_CHUNKS": False, "CODES": True, "SLOTS": 64}, 4))
        for pro, block, warps in ((2, 4096, 8), (1, 16384, 16)):
            for one_step in (False, True):  # the row loaded once into registers, or again in each pass
                out.append((f"int8 row codes {label} pro={pro}, {block} columns{', one step' if one_step else ''}",
                            "int8", int8._quantize_rows,
                            {"APPROX_DIV": True, "PRO": pro, "OUTLIERS": outliers, "SLOTS": 64, "BLOCK_K": block,
                             "ONE_STEP": one_step}, warps))
    for pro, block, warps in ((2, 4096, 8), (1, 16384, 16)):
        out.append((f"prepared row pro={pro}, {block} columns per step", "rows", prologue._prepare_rows_kernel,
                    {"PRO": pro, "BLOCK": block}, warps))
    for parts in (1, 4):  # the cache in one part, or split with the parts combined by the last one in
        out.append((f"decode attention, {parts} part(s)", "attention", attention._decode_attention,
                    {"GROUP": 8, "D": 64, "BLOCK_L": 64, "SCAN": 256, "PARTS_P2": parts}, 4))
    out.append(("decode attention, heads of 128", "attention", attention._decode_attention,  # llama-2-7b's
                {"GROUP": 1, "D": 128, "BLOCK_L": 64, "SCAN": 256, "PARTS_P2": 1}, 4))
    for pdl, label in ((1, "dependent launch"), (2, "dependent launch + L2 prefetch")):  # overlap.py
        out.append((f"4bit split shared pro=2, {label}", "4bit", fourbit._fourbit_kernel,
                    {"HAS_BIAS": False, "BLOCKSIZE": 64, "SPLIT": 1, "LOOKUP": 1, "PRO": 2, "RES": True,
                     "PAIRS": False, "BLOCK_N": 4, "BLOCK_K": 1024, "PDL": pdl}, 4))
    # main loops software-pipelined (config.pipeline_stages): their loads by cp.async, N steps deep
    for stages in (2, 3, 4):
        out.append((f"4bit split shuffle pro=2, {stages} stages", "4bit", fourbit._fourbit_kernel,
                    {"HAS_BIAS": False, "BLOCKSIZE": 64, "SPLIT": 1, "LOOKUP": 4, "PRO": 2, "RES": True,
                     "PAIRS": False, "BLOCK_N": 4, "BLOCK_K": 1024, "PDL": 2, "STAGES": stages}, 4))
    out.append(("dense pro=2, 3 stages", "dense", gemv._dense_kernel,
                {"HAS_BIAS": False, "PRO": 2, "RES": True, "BLOCK_N": 4, "BLOCK_K": 1024, "STAGES": 3}, 4))
    out.append(("int8 t=0 pro=1, 3 stages", "int8", int8._int8_kernel,
                {"HAS_BIAS": False, "APPROX_DIV": True, "PRO": 1, "RES": False, "OUTLIERS": False, "BLOCK_N": 8,
                 "BLOCK_K": 1024, "SKIP_CHUNKS": False, "STAGES": 3}, 4))
    out.append(("int8 outliers, reading the row's codes, 3 stages", "int8", int8._int8_kernel,
                {"HAS_BIAS": False, "APPROX_DIV": True, "PRO": 0, "RES": True, "OUTLIERS": True, "BLOCK_N": 8,
                 "BLOCK_K": 1024, "SKIP_CHUNKS": False, "CODES": True, "SLOTS": 64, "STAGES": 3}, 4))
    out.append(("decode attention, 1 part, 3 stages", "attention", attention._decode_attention,
                {"GROUP": 8, "D": 64, "BLOCK_L": 64, "SCAN": 256, "PARTS_P2": 1, "STAGES": 3}, 4))
    out.append(("rotary + cache write", "rope", rope._rope_store,
                {"H": 32, "KVH": 4, "D": 64, "HP": 32, "KVHP": 4}, 4))
    return out


def compile_one(kernel, family: str, constexprs: dict, warps: int, folder: Path) -> dict:  # noqa: ANN001
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    # constexpr parameters not named take their defaults, as a launch that leaves them out does
    constexprs = {p.name: p.default for p in kernel.params if p.is_constexpr and p.has_default} | constexprs
    signature, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = POINTERS[family][name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in FLOATS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            attrs[(i,)] = [["tt.divisibility", 16]]  # shapes and strides of the models are multiples of 16
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": warps}
    if family in ("int8", "rope"):  # as they are launched: products rounded before they are added
        options["enable_fp_fusion"] = False
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    cubin = folder / "k.cubin"
    cubin.write_bytes(compiled.asm["cubin"])
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    usage = subprocess.run([tools / "cuobjdump", "-res-usage", cubin], capture_output=True, text=True).stdout
    sass = subprocess.run([tools / "cuobjdump", "-sass", cubin], capture_output=True, text=True).stdout
    code = [line for line in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4}\*/", line)]

    def count(pattern: str) -> int:
        return sum(1 for line in code if re.search(pattern, line))

    # the longest loop (a backward branch): one K-step of a GEMV
    address = [int(re.match(r"\s+/\*([0-9a-f]{4})\*/", line).group(1), 16) for line in code]
    loop: list[str] = []
    for i, line in enumerate(code):
        target = re.search(r"BRA (?:`\(\.L_x_\d+\)|)?(0x[0-9a-f]+)", line)
        if target and int(target.group(1), 16) < address[i]:
            start = address.index(int(target.group(1), 16)) if int(target.group(1), 16) in address else i
            loop = max(loop, code[start:i + 1], key=len)
    numbers = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    return {
        "async_copies": count(r"\bLDGSTS\b"),
        "registers": int(numbers.get("REG", 0)), "stack": int(numbers.get("STACK", 0)),
        "local": int(numbers.get("LOCAL", 0)), "shared_bytes": compiled.metadata.shared,
        "instructions": len(code), "barriers": count(r"\bBAR\b"),
        "ldg_128": count(r"LDG\.E[.A-Z]*\.128"), "ldg_other": count(r"\bLDG\b") - count(r"LDG\.E[.A-Z]*\.128"),
        "lds": count(r"\bLDS\b"), "local_memory_ops": count(r"\b(LDL|STL)\b"),
        "loop_instructions": len(loop), "loop_barriers": sum(1 for line in loop if re.search(r"\bBAR\b", line)),
        "loop_ldg": sum(1 for line in loop if re.search(r"\bLDG\b", line)),
        "loop_lds": sum(1 for line in loop if re.search(r"\bLDS\b", line)),
        # fp16 values widened to fp32 (HADD2.F32): the activation's conversions in a 4-bit step
        "loop_f16_to_f32": sum(1 for line in loop if re.search(r"\bHADD2\.F32\b", line)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="kernels-out")
    args = p.parse_args()
    import triton

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, family, kernel, constexprs, warps in variants():
            try:
                row = {"kernel": name, **compile_one(kernel, family, constexprs, warps, Path(tmp))}
            except Exception as err:  # a variant the backend rejects is the finding
                row = {"kernel": name, "error": f"{type(err).__name__}: {str(err)[:300]}"}
            rows.append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"target": "cuda sm_90", "triton": triton.__version__, "rows": rows}
    (out / "kernels_compile.json").write_text(json.dumps(report, indent=1))
    print(f"Triton {triton.__version__}, sm_90")
    print(f"{'kernel':34} {'regs':>4} {'local':>5} {'smem':>6} {'instr':>6} {'BAR':>4} {'LDG.128':>7} {'LDG':>4} "
          f"{'LDS':>4} {'LDGSTS':>6} | loop: {'instr':>5} {'BAR':>3} {'LDG':>4} {'LDS':>4} {'f16>f32':>7}")
    for r in rows:
        if "error" in r:
            print(f"{r['kernel']:34} error: {r['error'][:90]}")
            continue
        print(f"{r['kernel']:34} {r['registers']:4} {r['local']:5} {r['shared_bytes']:6} {r['instructions']:6} "
              f"{r['barriers']:4} {r['ldg_128']:7} {r['ldg_other']:4} {r['lds']:4} {r['async_copies']:6} |       "
              f"{r['loop_instructions']:5} "
              f"{r['loop_barriers']:3} {r['loop_ldg']:4} {r['loop_lds']:4} {r['loop_f16_to_f32']:7}")


if __name__ == "__main__":
    main()
