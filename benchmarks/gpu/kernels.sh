#!/bin/bash
# The kernel benchmarks on a GPU machine, one stage per call (run after `source setup.sh`):
#   tune    GEMV correctness + launch-shape sweep, then tinyllama decode (eager / fast+bnb / fast+ours)
#   final   decode tables for tinyllama-1.1b-arch and llama-2-7b-arch, per-kernel profile
#   equiv   teacher-forced equivalence on the real SmolLM2-135M
# Output lands in $OUT (JSON + Markdown); each step has its own time limit so the others still run.
set -u
stage=$1
decode() {  # model precisions name limit_s
  timeout "$4" python3 benchmarks/decode_speed.py --model "$1" --precisions "$2" --name "$3" --out "$OUT" \
    --batches 1 --eager-tokens 32 --new-tokens 128 --repeats 3 --timeout-s 240 2>&1 | tail -n 40
}
case "$stage" in
  tune)
    timeout 270 python3 benchmarks/kernels_gemv.py --out "$OUT" --sweep 2>&1 | tail -n 90
    decode tinyllama-1.1b-arch fp16,nf4,int8-t0,int8 tinyllama 300 ;;
  final)
    decode tinyllama-1.1b-arch fp16,nf4,nf4-dq,int8-t0,int8 tinyllama 420
    decode llama-2-7b-arch fp16,nf4,int8 llama7b 420
    timeout 120 python3 benchmarks/kernels_gemv.py --out "$OUT" --formats fp16,nf4,int8-t0 --profile 2>&1 | tail -n 40 ;;
  equiv)
    timeout 500 python3 benchmarks/kernels_equivalence.py --out "$OUT" 2>&1 | tail -n 60 ;;
esac
