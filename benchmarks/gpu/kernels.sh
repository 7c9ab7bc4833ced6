#!/bin/bash
# The kernel benchmarks on a GPU machine, one stage at a time (run after `source setup.sh`):
#   dev           launch overlap (overlap.py) against plain launches: GEMV checks + times (nf4 plain,
#                 dependent launch, with L2 prefetch; int8 t=0 with prefetch; nf4 with bitsandbytes'
#                 roundings and the register lookup; int8 t=6 with the masked outlier pass; both
#                 models), then tinyllama decode with our kernels in those modes
#   sweep         the 4-bit launch-shape sweep (lookups x activation layouts; LOOKUPS narrows the
#                 lookups, e.g. shuffle; FORMATS, e.g. nf4-norm; MODELS; STAGES adds pipeline depths,
#                 e.g. off,3), its winners as a table (fourbit_table.json) for config.FOURBIT
#   table         nf4 decode with the sweep's table (after `sweep` in the same $OUT) and without it
#                 (MODEL: tinyllama, llama7b or both)
#   final-decode  tinyllama decode table: eager / fast+bnb / fast+quantbench (DEFAULT_KINDS),
#                 five precisions
#   final-check   teacher-forced equivalence on the real SmolLM2-135M (needs its GGUF, joined by
#                 setup.sh); a "+prefetch" suffix runs a precision with launch overlap, "+noattention"
#                 (any kind) without that kernel; EQ_KERNELS=bnb: the fast engine without our kernels
#   final-gemv    per-kernel times and profiler bandwidth (int8-t6-clean: the threshold with no
#                 outlier in the activation)
#   final-7b      llama-2-7b-arch decode table (nf4, int8, fp16, nf4-dq, int8-t0)
#   next          the defaults timed as such, beside plain launches and without the "rope" kind
#                 (tinyllama; PRECISIONS, five by default)
#   rows          each GEMV's row work once (a row kernel first) against inline, per model
#                 (MODEL: tinyllama or llama7b): int8 and nf4 decode, then the GEMVs alone
#   early         llama-2-7b LLM.int8 with its outlier list's weights gathered before the int8
#                 dot against after it (config.int8_list_gather), and with dependent launches (the
#                 row kernels' launch and wait behind the kernel before): decode, then the GEMVs alone
#   shuffle       the 4-bit codes looked up by warp shuffles against the shared-memory table:
#                 the GEMVs alone (both models, nf4 and nf4-dq), then decode (MODEL as in rows)
#   attention     the decode attention with its cache in parts against one part and SDPA (both
#                 models' shapes, cache lengths 192-4096), then nf4 decode at prompt 128 and 2048
#                 in one part and in parts, the default (MODEL as in rows)
#   stages        main loops software-pipelined (config.pipeline_stages) against as written, per
#                 MODEL (as in rows): the GEMVs alone (2-4 stages for 4-bit), the attention alone,
#                 then decode (tinyllama nf4 and int8; llama-2-7b nf4, also with the attention in one part)
#   against       decode with the kernels of an earlier revision, then with the working tree's, on one
#                 machine (whichever card it has): first `mkdir baseline && git archive REV src
#                 benchmarks | tar -x -C baseline`, sent with the working tree (MODEL as in rows;
#                 PRECISIONS, nf4 by default; KERNELS for the working tree's, e.g.
#                 quantbench,quantbench+stages3)
#   ablate        the 4-bit GEMV's loop with parts of its arithmetic left out (kernels_ablate.py: the
#                 loads alone, + the code lookup, + the activation split, the full loop), beside
#                 gemv_4bit and a copy of the same bytes, at both models' shapes
#   column        the 4-bit K-step's tiles ordered [blocks, rows, bytes] (config.fourbit_tile "column") against
#                 the default order: the GEMVs alone (both models, plain rows and with their row work
#                 inline), llama-2-7b's launch shapes in that order, then nf4 and nf4-dq decode (MODEL as in rows)
#   overlap       tinyllama decode with every kernel launched dependently (the rotary + cache
#                 write too, which "auto" leaves plain): nf4 with prefetch, int8 without
# LIMIT bounds each process: decode_speed.py measures every precision with every kernels choice
# in a process of its own (a load, eager decode, a compile: about 40-60 s for tinyllama on a
# Hopper GPU); narrow PRECISIONS or KERNELS so that their product times LIMIT fits the call.
# Output lands in $OUT (JSON, Markdown, logs); each step has its own time limit so the others
# still run, and its output is kept in $OUT even when the limit stops it.
set -u
stage=$1
log=$OUT/kernels_$stage.log
decode() {  # model precisions kernels name limit_s_per_process [extra args]; TREE: another source tree
  local n tree=${TREE:-$PWD}
  n=$(( $(echo "$2" | tr ',' '\n' | wc -l) * $(echo "$3" | tr ',' '\n' | wc -l) ))  # one process each
  # built once, outside any process's limit (random weights for a 7B architecture: ~30 s)
  PYTHONPATH=$QB_WORK/site:$tree/src timeout 120 python3 -c "from quantbench.models import resolve; resolve('$1')" \
    >> "$log" 2>&1
  PYTHONPATH=$QB_WORK/site:$tree/src timeout "$(( n * $5 + 15 ))" python3 "$tree/benchmarks/decode_speed.py" \
    --model "$1" --precisions "$2" --kernels "$3" --name "$4" --out "$OUT" --batches 1 --eager-tokens "${EAGER:-32}" \
    --new-tokens 64 --repeats 2 --timeout-s "$5" "${@:6}" 2>&1 | grep -v MatMul8bitLt >> "$log"
}
pick_model() {  # MODEL (tinyllama, the default, or llama7b) -> model, extra (decode args), limit (s per process)
  if [ "${MODEL:-tinyllama}" = llama7b ]; then model=llama-2-7b-arch extra=(--eager-tokens 4) limit=90; else
    model=tinyllama-1.1b-arch extra=() limit=60; fi
}
gemv() {  # limit_s out_subdir [args]
  mkdir -p "$OUT/$2"
  timeout "$1" python3 benchmarks/kernels_gemv.py --out "$OUT/$2" "${@:3}" 2>&1 | grep -v '^{' >> "$log"
}
case "$stage" in
  dev)
    gemv 100 gemv --formats nf4,nf4-pdl,nf4-prefetch,int8-t0-prefetch,nf4-bnbmath-regs,int8-t6-masked
    decode tinyllama-1.1b-arch nf4,nf4+pdl,nf4+prefetch,fp16+prefetch,int8+masked+prefetch,nf4+bnbmath+regs+prefetch \
      quantbench tinyllama 60 ;;
  sweep)  # the 4-bit launch-shape sweep; its table goes into config.FOURBIT
    gemv "${LIMIT:-280}" sweep --formats "${FORMATS:-nf4}" --models "${MODELS:-tinyllama,llama7b}" --sweep \
      ${LOOKUPS:+--lookups "$LOOKUPS"} ${STAGES:+--stages "$STAGES"} ;;
  table)  # every kernels choice of a process given --fourbit-table takes the table's shapes and lookup
    table=(--fourbit-table "$OUT/sweep/fourbit_table.json")
    if [ "${MODEL:-both}" != llama7b ]; then
      decode tinyllama-1.1b-arch nf4 quantbench tinyllama_table 60 "${table[@]}"
      decode tinyllama-1.1b-arch nf4 quantbench tinyllama_default 60
    fi
    if [ "${MODEL:-both}" != tinyllama ]; then
      decode llama-2-7b-arch nf4 quantbench llama7b_table 100 --eager-tokens 4 "${table[@]}"
      decode llama-2-7b-arch nf4 quantbench llama7b_default 100 --eager-tokens 4
    fi ;;
  final-decode)  # KERNELS adds kernel choices, e.g. bnb,quantbench,quantbench+prefetch
    decode tinyllama-1.1b-arch "${PRECISIONS:-fp16,nf4,nf4-dq,int8-t0,int8}" "${KERNELS:-bnb,quantbench}" "${NAME:-tinyllama}" \
      "${LIMIT:-60}" ;;
  final-check)  # needs the SmolLM2 GGUF joined by setup.sh; EQUIVALENCE narrows the list
    timeout 540 python3 benchmarks/kernels_equivalence.py --out "$OUT" --kernels "${EQ_KERNELS:-quantbench}" \
      --precisions "${EQUIVALENCE:-int8,int8-t0,nf4:bitsandbytes:registers,fp16,nf4}" 2>&1 \
      | grep -v MatMul8bitLt >> "$log" ;;
  final-gemv)
    gemv 100 gemv --formats fp16,nf4,nf4-dq,int8-t0,int8-t6,int8-t6-clean ;;
  next)
    decode tinyllama-1.1b-arch "${PRECISIONS:-fp16,nf4,int8,int8-t0,nf4-dq}" \
      bnb,quantbench,quantbench+nopdl,quantbench/dense/4bit/int8/attention/fuse tinyllama "${LIMIT:-60}" ;;
  rows)  # the defaults ("auto": once for LLM.int8 and 4-bit launches of N and K >= 4096) beside both fixed modes
    pick_model
    decode "$model" int8 quantbench,quantbench+inline,quantbench+once "${MODEL:-tinyllama}_rows_int8" \
      "${LIMIT:-60}" "${extra[@]}"
    decode "$model" nf4 quantbench,quantbench+once "${MODEL:-tinyllama}_rows_nf4" "${LIMIT:-60}" "${extra[@]}"
    gemv 60 gemv --models "${MODEL:-tinyllama}" --formats int8-t6,int8-t6-once,int8-t0,int8-t0-once,nf4-norm,nf4-norm-once ;;
  early)
    decode llama-2-7b-arch int8 quantbench,quantbench+early,quantbench+pdl,quantbench+early+pdl llama7b_early \
      "${LIMIT:-75}" --eager-tokens 4
    gemv 60 gemv --models llama7b --formats int8-t6-once,int8-t6-once-early,int8-t0 ;;
  shuffle)
    gemv 90 gemv --models tinyllama,llama7b --formats nf4,nf4-shuffle,nf4-dq,nf4-dq-shuffle,nf4-norm,nf4-norm-shuffle
    pick_model
    decode "$model" nf4,nf4-dq quantbench,quantbench+shuffle "${MODEL:-tinyllama}_shuffle" "${LIMIT:-60}" \
      "${extra[@]}" ;;
  attention)
    timeout 120 python3 benchmarks/kernels_attention.py --out "$OUT/attention" 2>&1 | grep -v '^{' >> "$log"
    pick_model
    for prompt in 128 2048; do
      decode "$model" nf4 quantbench+one,quantbench "${MODEL:-tinyllama}_attention_p$prompt" "${LIMIT:-60}" \
        --prompt-len "$prompt" "${extra[@]}"
    done ;;
  stages)  # MODEL as in rows; PRECISIONS and KERNELS override the decode's lists
    pick_model
    precisions=nf4,int8 kernels=quantbench,quantbench+stages3
    if [ "$model" = llama-2-7b-arch ]; then precisions=nf4 kernels=$kernels,quantbench+stages3+one; fi
    gemv 100 gemv --models "${MODEL:-tinyllama}" \
      --formats nf4,nf4-stages2,nf4-stages3,nf4-stages4,int8-t0,int8-t0-stages3,fp16,fp16-stages3
    timeout 60 python3 benchmarks/kernels_attention.py --out "$OUT/attention" --models "${MODEL:-tinyllama}" \
      --batches 1 --stages 3 2>&1 | grep -v '^{' >> "$log"
    decode "$model" "${PRECISIONS:-$precisions}" "${KERNELS:-$kernels}" "${MODEL:-tinyllama}_stages" \
      "${LIMIT:-$limit}" "${extra[@]}" ;;
  ablate)
    mkdir -p "$OUT/ablate"
    timeout "${LIMIT:-120}" python3 benchmarks/kernels_ablate.py --out "$OUT/ablate" >> "$log" 2>&1 ;;
  column)
    gemv 100 gemv --models tinyllama,llama7b --formats nf4,nf4-column,nf4-norm,nf4-norm-column,nf4-act,nf4-act-column
    gemv 100 sweep --models llama7b --formats nf4-column --sweep --lookups shuffle \
      --candidates 4x2048x4x0,8x2048x4x0,8x2048x8x0,16x2048x8x0,8x1024x4x0
    pick_model
    decode "$model" nf4,nf4-dq quantbench,quantbench+column "${MODEL:-tinyllama}_column" "${LIMIT:-$limit}" \
      "${extra[@]}" ;;
  overlap)  # the rotary + cache write launched dependently too (the explicit modes; "auto" keeps it plain)
    decode tinyllama-1.1b-arch nf4 quantbench,quantbench+prefetch tinyllama_overlap_nf4 "${LIMIT:-60}"
    decode tinyllama-1.1b-arch int8 quantbench,quantbench+pdl tinyllama_overlap_int8 "${LIMIT:-60}" ;;
  against)
    [ -d baseline/src ] || { echo "no baseline/: see the stage's comment at the top" | tee -a "$log"; exit 1; }
    pick_model
    TREE=$PWD/baseline decode "$model" "${PRECISIONS:-nf4}" quantbench "${MODEL:-tinyllama}_baseline" \
      "${LIMIT:-$limit}" "${extra[@]}"
    decode "$model" "${PRECISIONS:-nf4}" "${KERNELS:-quantbench}" "${MODEL:-tinyllama}_working_tree" \
      "${LIMIT:-$limit}" "${extra[@]}" ;;
  final-7b)  # PRECISIONS narrows the list (the most asked-about first)
    decode llama-2-7b-arch "${PRECISIONS:-nf4,int8,fp16,nf4-dq,int8-t0}" "${KERNELS:-bnb,quantbench}" "${NAME:-llama7b}" \
      "${LIMIT:-100}" --eager-tokens 4 ;;
esac
tail -n 60 "$log"
