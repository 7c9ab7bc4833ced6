#!/bin/bash
# The kernel benchmarks on a GPU machine, one stage per call (run after `source setup.sh`):
#   dev1    GEMV checks + times (fp16, nf4, nf4-dq, int8 t=6; both models), the 4-bit launch-shape
#           sweep (two code-table lookups)
#   dev2    tinyllama decode: nf4 and fp16 with kernel subsets (4-bit GEMV, decode attention,
#           block fusion), int8 (t=6) with all of quantbench's kernels
#   final   per-kernel times and profiler bandwidth, teacher-forced equivalence on the real
#           SmolLM2-135M, decode tables (eager / fast+bnb / fast+ours) for both models
# Output lands in $OUT (JSON, Markdown, logs); each step has its own time limit so the others
# still run, and its output is kept in $OUT even when the limit stops it.
set -u
stage=$1
log=$OUT/kernels_$stage.log
decode() {  # model precisions kernels name limit_s [extra args]
  timeout "$(( $5 + 15 ))" python3 benchmarks/decode_speed.py --model "$1" --precisions "$2" --kernels "$3" \
    --name "$4" --out "$OUT" --batches 1 --eager-tokens 32 --new-tokens 64 --repeats 2 --timeout-s "$5" \
    "${@:6}" 2>&1 | grep -v MatMul8bitLt >> "$log"
}
gemv() {  # limit_s out_subdir [args]
  mkdir -p "$OUT/$2"
  timeout "$1" python3 benchmarks/kernels_gemv.py --out "$OUT/$2" "${@:3}" 2>&1 | grep -v '^{' >> "$log"
}
case "$stage" in
  dev1)
    gemv 150 gemv --formats fp16,nf4,nf4-dq,int8-t6
    gemv 300 sweep --formats nf4,fp16 --sweep ;;
  dev2)
    decode tinyllama-1.1b-arch nf4 \
      bnb,quantbench/dense/int8,quantbench/dense/4bit,quantbench/dense/4bit/attention,quantbench/dense/4bit/attention/fuse \
      tinyllama-nf4 230
    decode tinyllama-1.1b-arch fp16 quantbench/dense,quantbench/dense/attention/fuse tinyllama-fp16 120
    decode tinyllama-1.1b-arch int8 quantbench/dense/int8/attention/fuse tinyllama-int8 90 ;;
  final)  # needs the SmolLM2 GGUF joined by setup.sh
    gemv 120 gemv --formats fp16,nf4,nf4-dq,int8-t0,int8-t6
    timeout 200 python3 benchmarks/kernels_equivalence.py --out "$OUT" \
      --precisions fp16,nf4,nf4-dq,int8,int8-t0 2>&1 | grep -v MatMul8bitLt >> "$log"
    decode tinyllama-1.1b-arch fp16,nf4,nf4-dq,int8-t0,int8 bnb,quantbench tinyllama 110 ;;
  final7b)
    decode llama-2-7b-arch fp16,nf4,nf4-dq,int8-t0,int8 bnb,quantbench llama7b 150 --eager-tokens 8 ;;
esac
tail -n 60 "$log"
