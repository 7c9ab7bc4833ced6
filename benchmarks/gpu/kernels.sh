#!/bin/bash
# The kernel benchmarks on a GPU machine, one stage per call (run after `source setup.sh`):
#   tune    GEMV correctness + launch-shape sweep, then tinyllama decode (eager / fast+bnb / fast+ours)
#   final   per-kernel times and profiler bandwidth, teacher-forced equivalence on the real
#           SmolLM2-135M, tinyllama decode tables (eager / fast+bnb / fast+ours)
# Output lands in $OUT (JSON + Markdown); each step has its own time limit so the others still run.
set -u
stage=$1
decode() {  # model precisions kernels name limit_s
  timeout "$(( $5 + 15 ))" python3 benchmarks/decode_speed.py --model "$1" --precisions "$2" --kernels "$3" \
    --name "$4" --out "$OUT" --batches 1 --eager-tokens 32 --new-tokens 64 --repeats 2 --timeout-s "$5" 2>&1 | tail -n 30
}
case "$stage" in
  tune)
    timeout 270 python3 benchmarks/kernels_gemv.py --out "$OUT" --sweep 2>&1 | tail -n 90
    decode tinyllama-1.1b-arch fp16,nf4,int8-t0,int8 bnb,quantbench tinyllama 240 ;;
  final)  # needs the SmolLM2 GGUF in /tmp (setup.sh)
    timeout 80 python3 benchmarks/kernels_gemv.py --out "$OUT" \
      --formats fp16,nf4,nf4-factored,int8-t0,int8-t0-bf16,int8-t6 2>&1 | tail -n 64
    timeout 170 python3 benchmarks/kernels_equivalence.py --out "$OUT" --precisions fp16,nf4,int8,int8-t0,nf4-dq \
      2>&1 | grep -v MatMul8bitLt | tail -n 12
    decode tinyllama-1.1b-arch int8 bnb,quantbench tinyllama-int8 75
    decode tinyllama-1.1b-arch nf4 bnb,quantbench+4bit,quantbench tinyllama-nf4 95
    decode tinyllama-1.1b-arch fp16,int8-t0 bnb,quantbench tinyllama-fp16-int8t0 140 ;;
esac
