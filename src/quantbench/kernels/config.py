"""Launch shapes of the GEMV kernels: one fixed choice per (kernel, N, K), never timed at run time.

A shape picked by timing would change the summation order, and so the low bits of the result,
from one process to the next; a table keeps every run's numbers identical. The table was set from
benchmarks/kernels_gemv.py on an H100 (benchmarks/NOTES-decode.md has the sweep).

A shape is (BLOCK_N rows per program, BLOCK_K elements per step, warps, SPLIT programs along K).
"""

from __future__ import annotations

import os

SMS = 132  # H100 SXM multiprocessors: fewer programs than about two per SM leave bandwidth unused

DEFAULTS: dict[str, tuple[int, int, int, int]] = {
    "dense": (4, 1024, 4, 1),
    "4bit": (4, 1024, 4, 1),
    "int8": (8, 1024, 4, 1),
}
LONG_ROWS = {"int8": (8, 2048, 8, 1)}  # K >= 4096: longer steps (tinyllama down_proj sweep)
# 4-bit per (N, K) where the sweep found better than DEFAULTS and the split rule (merged q/k/v and
# gate/up shapes of the tinyllama and llama-2-7b architectures). llama-2-7b's are the shuffle
# lookup's sweep winners (its nf4 decode: 3.81 ms/token against 4.24-4.36 with the shared lookup
# and its shapes); tinyllama keeps the shared lookup's, with which the shuffle lookup decoded in
# 0.95 ms/token against 1.03 with its own sweep's (wider programs for q/k/v and gate/up, whose
# fused RMSNorm the sweep's plain GEMV does not have). llama-2-7b's launches read 2048 elements
# per step, a shape the first sweeps did not try: o_proj 7.6 and down_proj 21.9 us against 9.5
# and 23.8 (nf4 decode 3.08 against 3.17 ms/token), q/k/v 17.4 and gate/up 28.0 against 18.0 and
# 29.2 as they run with their rows prepared once (rows_once; nf4 decode 2.89; q/k/v within the spread).
FOURBIT: dict[tuple[int, int], tuple[int, int, int, int]] = {
    (2560, 2048): (4, 1024, 4, 0), (2048, 2048): (8, 1024, 8, 0), (11264, 2048): (4, 1024, 4, 0),
    (2048, 5632): (4, 1024, 4, 0), (12288, 4096): (4, 2048, 4, 0), (4096, 4096): (8, 2048, 8, 0),
    (22016, 4096): (4, 2048, 4, 0), (4096, 11008): (8, 2048, 8, 0),
}
_OVERRIDES: dict[str, tuple[int, int, int, int]] = {}
# From the H100 sweeps (benchmarks/kernels_gemv.py --sweep): the codes by warp shuffle with the
# split activation layout, best times summing to 115 us over the eight shapes, against 140 for a
# lookup per nibble from the 16 codes in shared memory, 198 for the 256-entry pair table (fewer
# instructions per byte than "shared" but bank conflicts) and 212 for the pair table with int32
# activation words.
_GATHER = {"4bit": "shuffle", "pairs": False, "4bit_numerics": "fp32", "int8_outliers": "masked", "overlap": "auto",
           "rows": "auto", "int8_list": "end", "attention_parts": "parts", "stages": "off",
           "4bit_x": "words", "4bit_tile": "row"}
PIPELINED = ("4bit", "int8", "dense", "attention")  # the kernels whose main loop config.pipeline_stages pipelines
STAGE_COUNTS = (2, 3, 4)
_CHOICES = {"4bit": ("shared", "bytes", "global", "registers", "shuffle"), "4bit_numerics": ("fp32", "bitsandbytes"),
            "int8_outliers": ("skip", "masked"), "overlap": ("auto", "off", "launch", "prefetch", "every"),
            "rows": ("auto", "inline", "once"), "int8_list": ("end", "early"), "attention_parts": ("one", "parts"),
            "4bit_x": ("words", "split", "direct"), "4bit_tile": ("row", "column"),
            "stages": ("off", *(f"{scope}{n}" for scope in ("", *(f"{kind}:" for kind in PIPELINED))
                                for n in STAGE_COUNTS))}


def _choose(key: str, mode: str) -> None:
    if mode not in _CHOICES[key]:
        raise ValueError(f"{key}: one of {', '.join(_CHOICES[key])}, not {mode!r}")
    _GATHER[key] = mode


def fourbit_gather() -> str:
    """How the 4-bit kernel looks its codes up: "bytes" (a 256-entry pair table, tl.gather),
    "shuffle" (the default: each lane holds one fp32 code and a nibble names the lane a warp
    shuffle reads: exact codes, no shared memory; compiled only, the interpreter takes "shared"),
    "shared" (the 16 codes, tl.gather per nibble), "global" (the 16 codes from L1) or "registers"
    (byte permutes, nibbles.py; with bitsandbytes' numerics and 16-bit activations only, else
    "shared"; on an H100 as fast as "shared" with the same numerics, and its results equal
    gemv_4bit's)."""
    return _GATHER["4bit"]


def set_fourbit_gather(mode: str) -> None:
    _choose("4bit", mode)


def fourbit_pairs() -> bool:
    """4-bit kernel reads 16-bit activations as int32 words in the packed layout (True) or as a
    row split into even and odd elements through shared memory (False)."""
    return _GATHER["pairs"]


def set_fourbit_pairs(on: bool) -> None:
    _GATHER["pairs"] = on


def fourbit_activation() -> str:
    """How the 4-bit kernel's activation, after its prologue (norm or silu * up), crosses through
    shared memory to the threads holding the packed bytes: "words" (the default: each (even, odd)
    pair of 16-bit values, the values the high and low nibbles of a byte meet, as one 32-bit
    word) or "split" (as two fp32 values, converted before the exchange). The same values meet
    the same arithmetic: under the interpreter the results are the same bit for bit; compiled
    for an H100 they differ in the last bits. Compiled for sm_90 (Triton 3.6) at 4 rows x 1024
    columns, a K-step is 16 instructions shorter with words (179 against 195 with no prologue,
    209 against 225 with the RMSNorm, 296 against 312 with silu * up), with 4 shared loads where
    there were 20 and one barrier where there were two. H100, nf4 decode at batch 1: llama-2-7b
    3.24 ms/token against 3.51, tinyllama 0.89 against 0.92. "direct" (opt-in): in a
    launch without a prologue (o_proj; every launch whose row work is done once, rows_once)
    nothing crosses: every thread reads the (even, odd) words its bytes meet from memory, in the
    packed bytes' layout (the rows share them through L1), so the K-step has no shared memory
    and no barrier (181 instructions); launches with a prologue keep the words crossing, since
    there each thread would norm or silu its 32 values itself (300 and 648 instructions).
    Timed on an H100 it gained nothing: llama-2-7b nf4 decode 3.18 ms/token against 3.17, and
    the GEMVs alone 1-12 % slower than with words but for tinyllama's gate/up.
    fp32 activations always take "split"."""
    return _GATHER["4bit_x"]


def set_fourbit_activation(mode: str) -> None:
    _choose("4bit_x", mode)


def fourbit_tile() -> str:
    """The order of a 4-bit K-step's tiles: "row" (the default: [rows, blocks, bytes]) or "column"
    (opt-in: [blocks, rows, bytes]). The same products and per-block sums; what changes is the
    layout Triton picks, and with it whether a thread's 16-byte pieces lie in one row (each
    activation value converted to fp32 once per row) or in several rows at the same columns (once
    for all of them). Under the interpreter both give the same bits; compiled, the last sum over
    the blocks runs in another layout and may round differently (kernels.sh column checks it
    against bitsandbytes). Compiled for sm_90 at 8 rows x 2048 columns with no prologue, Triton 3.6
    (the H100 machine's) shares the conversions in the column tile: 32 per thread and step against
    128, 541 instructions against 653 (4.2 per weight; the defaults' 4 rows: 5.4), 10 barriers
    against 18 (benchmarks/results/cpu/kernels_compile_triton36.json); Triton 3.9 shares them in the
    row tile instead, where "column" converts four times as often. Untimed. The "pairs" layout and
    the "direct" activation keep the row tile."""
    return _GATHER["4bit_tile"]


def set_fourbit_tile(mode: str) -> None:
    _choose("4bit_tile", mode)


def fourbit_numerics() -> str:
    """The 4-bit kernel's arithmetic: "fp32" (code x activation summed in fp32 per block, times
    the block's absmax: closest to exact) or "bitsandbytes" (gemv_4bit's: the code, the absmax,
    each weight and each product rounded to the activation dtype, summed in fp32; the split
    activation layout only). On an H100 both run at the same speed and both stay within KL 1e-5
    of eager bitsandbytes over a decode with fp16 compute (benchmarks/results/h100/kernels/)."""
    return _GATHER["4bit_numerics"]


def set_fourbit_numerics(mode: str) -> None:
    _choose("4bit_numerics", mode)


def int8_outlier_pass() -> str:
    """How the LLM.int8 kernel adds its outliers' term when a row has any: "masked" (the default:
    every chunk's masked loads, one reduction at the end) or "skip" (each 256-column chunk tested
    block-wide, chunks without outliers skipped). With 8 outlier features, H100 CUDA-graph times
    of the masked pass were 1-12 % lower on nine of the ten tinyllama and llama-2-7b shapes
    (4 % higher on 7B down_proj; separate runs, benchmarks/results/h100/kernels/). A row without
    outliers runs neither."""
    return _GATHER["int8_outliers"]


def set_int8_outlier_pass(mode: str) -> None:
    _choose("int8_outliers", mode)


def launch_overlap() -> str:
    """How consecutive kernels overlap (overlap.py): "auto" (prefetch for the 4-bit GEMV only:
    what measured faster on an H100), "off" (plain launches), "launch" (programmatic dependent
    launch: a kernel's programs start during the previous kernel and wait for its results),
    "prefetch" (and they ask L2 for their weights before waiting) or "every" (dependent launch for
    every kernel, the prefetch for the 4-bit GEMV alone: what "auto" becomes if the int8 GEMVs,
    the dense GEMVs and the rotary kernel gain from dependent launch as tinyllama LLM.int8 did,
    0.98 ms/token under "launch" against 1.05; untimed as such). Hopper and newer only."""
    return _GATHER["overlap"]


def set_launch_overlap(mode: str) -> None:
    _choose("overlap", mode)


def int8_list_gather() -> str:
    """When an LLM.int8 GEMV whose row work was done once gathers its rows' weights at the listed
    outlier columns: "end" (the default: after the int8 dot, a dependent round trip to memory at
    the end of every program) or "early" (right after the program's wait for its inputs, so the
    loads are in flight during the dot; a few registers more). Same values, same sums. Profiled
    on an H100 at llama-2-7b shapes with 8 outlier features, the list's term added 1-9 us per
    launch over threshold 0, most at gate/up's 22k rows; "early" made each llama-2-7b LLM.int8
    GEMV 17-39 % slower alone and its decode 5.29 ms/token against 4.21 (H100, run 26)."""
    return _GATHER["int8_list"]


def set_int8_list_gather(mode: str) -> None:
    _choose("int8_list", mode)


def attention_parts() -> str:
    """How the decode attention spreads a cache over programs: "parts" (the default: the cache
    in parts of whole 64-position steps, enough for about two programs per SM, combined by the
    last part in; attention.parts_for) or "one" (one program per row and query head walks the
    whole cache). H100, nf4 decode at batch 1, ms/token one part -> parts: tinyllama 0.89 ->
    0.85 at prompt 128 and 2.32 -> 1.00 at prompt 2048, llama-2-7b 3.24 -> 3.15 and 5.35 ->
    3.70. Alone at batch 8 (256 programs) parts lost at 192 positions (10.1 against 6.8 us at
    tinyllama, 16.6 against 13.6 at llama-2-7b) and won from 1024 on, hence parts_for's rule."""
    return _GATHER["attention_parts"]


def set_attention_parts(mode: str) -> None:
    _choose("attention_parts", mode)


def pipeline_stages(kind: str) -> int | None:
    """How many steps of a kernel's main loop are in flight at once (`kind` one of PIPELINED; None:
    the loop as written, one step's loads at a time). Mode "off" (the default), "N" for every
    kernel or "KIND:N" for one (e.g. "4bit:3"). With N stages Triton software-pipelines the loop:
    the loads of the next N - 1 steps go to shared memory by cp.async while a step computes, so
    a program keeps N steps' bytes in flight without holding them in registers. Only the order
    of the loads changes, not the arithmetic: the results are the same bit for bit. Compiled for
    sm_90 by Triton 3.6 (benchmarks/kernels_compile.py), the 4-bit GEMV's K-loop then holds no
    global loads, at the same 56 registers and 6.4-19.2 KB of shared memory for 2-4 stages;
    "off" compiles every kernel as it would be without the mode. Timed slower (H100, runs 25-26:
    llama-2-7b nf4 decode 5.05 ms/token at 3 stages against 3.62, tinyllama LLM.int8 1.32 against
    1.07), so it stays opt-in."""
    mode = _GATHER["stages"]
    if mode == "off":
        return None
    scope, _, count = mode.rpartition(":")
    return int(count) if scope in ("", kind) else None


def set_pipeline_stages(mode: str) -> None:
    _choose("stages", mode)


def row_prologue() -> str:
    """Where a GEMV's per-row work happens: "inline" (every program redoes it: the RMSNorm's sum
    of squares, silu(gate) * up, and for LLM.int8 the activation's absmax, quantization and
    outlier test, over the whole row), "once" (a one-program-per-row kernel before the GEMV
    writes the prepared row, or for LLM.int8 its int8 codes, scale and outlier list, which every
    program then reads) or "auto" (the default: once for LLM.int8 and 4-bit launches of N and K >=
    4096, inline otherwise; see rows_once). The same arithmetic either way, and the same results but for the
    order in which LLM.int8's outlier term is summed."""
    return _GATHER["rows"]


def rows_once(kind: str, n: int, k: int) -> bool:
    """Whether a `kind` GEMV ("dense", "4bit", "int8") of N = n, K = k does its row work once.
    "auto" is what measured faster on an H100 (one process each, same machine): llama-2-7b-arch
    LLM.int8 decode took 7.43-7.96 ms per token inline and 4.6-4.9 once, its int8 GEMVs' device
    time falling from 6.38 to 2.98 ms with the row kernels adding 1.16; llama-2-7b-arch nf4 3.02
    once against 3.08 inline (with the words crossing and the shuffle lookup; with the split
    crossing and the shared lookup once had lost, 4.36 against 4.24); tinyllama-1.1b-arch's
    LLM.int8 step replayed in 1.15 ms inline and 1.29 once. Every 7B launch has N and K >= 4096,
    no tinyllama launch has both. The dense GEMV's norm and silu * up done once did not pay."""
    mode = _GATHER["rows"]
    return mode == "once" or (mode == "auto" and kind in ("int8", "4bit") and min(n, k) >= 4096)


def set_row_prologue(mode: str) -> None:
    _choose("rows", mode)


def modes() -> dict[str, str]:
    """The kernels' modes as set now (a result records them beside its numbers)."""
    return {"4bit_lookup": fourbit_gather(), "4bit_numerics": fourbit_numerics(),
            "int8_outlier_pass": int8_outlier_pass(), "launch_overlap": launch_overlap(),
            "row_prologue": row_prologue(), "int8_list_gather": int8_list_gather(),
            "attention_parts": attention_parts(), "pipeline_stages": _GATHER["stages"],
            "4bit_activation": fourbit_activation(), "4bit_tile": fourbit_tile()}


_MODE_KEYS = {"4bit_lookup": "4bit", "4bit_numerics": "4bit_numerics",
              "int8_outlier_pass": "int8_outliers", "launch_overlap": "overlap", "row_prologue": "rows",
              "int8_list_gather": "int8_list", "attention_parts": "attention_parts",
              "pipeline_stages": "stages", "4bit_activation": "4bit_x", "4bit_tile": "4bit_tile"}


def set_modes(chosen: dict[str, str]) -> None:
    """Set modes by the names modes() gives them: set_modes(saved) restores a modes() snapshot."""
    for name, mode in chosen.items():
        if name not in _MODE_KEYS:
            raise ValueError(f"kernel mode: one of {', '.join(_MODE_KEYS)}, not {name!r}")
        _choose(_MODE_KEYS[name], mode)


def interpreted() -> bool:
    """True under Triton's CPU interpreter (TRITON_INTERPRET=1): no inline PTX there."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def unfused_products() -> dict:
    """Launch keywords for a kernel whose fp32 products must round before they are added, as in
    eager torch or bitsandbytes: no fused multiply-add (the interpreter has no such option)."""
    return {} if interpreted() else {"enable_fp_fusion": False}


def set_config(kind: str, shape: tuple[int, ...] | None) -> None:
    """Force a launch shape for one kind (the tuning benchmark uses this); None restores the table.
    A 3-tuple means SPLIT 1 for dense and int8 and the split rule for 4-bit."""
    if shape is None:
        _OVERRIDES.pop(kind, None)
    else:
        _OVERRIDES[kind] = tuple(shape) if len(shape) == 4 else (*shape, 0)


def _split_rule(programs: int, steps: int) -> int:
    """Enough programs to fill the SMs twice over, each keeping at least two K-steps."""
    if programs >= 2 * SMS:
        return 1
    return max(1, min(-(-2 * SMS // programs), steps // 2))


def config_for(kind: str, n: int, k: int) -> tuple[int, int, int, int]:
    base = "4bit" if kind.startswith("4bit") else kind
    if base == "4bit":
        shape = FOURBIT.get((n, k), (*DEFAULTS["4bit"][:3], 0))
    else:
        shape = LONG_ROWS.get(base, DEFAULTS[base]) if k >= 4096 else DEFAULTS[base]
    block_n, block_k, warps, split = _OVERRIDES.get(base, shape)
    if interpreted():  # the CPU interpreter pays per program: few, wide ones (same numerics class)
        block_n = 128
    if base == "4bit":
        block_k = max(block_k, int(kind[4:]))  # a step holds whole quantization blocks
    block_k = min(block_k, max(16, 1 << (k - 1).bit_length()))  # no step wider than the row
    if split == 0:  # 0: the rule decides
        split = 1 if interpreted() else _split_rule(-(-n // block_n), -(-k // block_k))
    return block_n, block_k, warps, split
