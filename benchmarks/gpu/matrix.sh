#!/usr/bin/env bash
# One model's full matrix on the GPU; results accumulate in $QB_WORK/results (a rerun resumes)
# and are copied to $OUT.
# usage: OUT=DIR bash benchmarks/gpu/matrix.sh MODEL NAME [extra quantbench run options]
source benchmarks/gpu/setup.sh
model=$1; name=$2; shift 2
results=$QB_WORK/results/$name
start=$(date +%s)
python3 -m quantbench run "$model" --results "$results.jsonl" "$@" 2>&1 | tail -60
python3 -m quantbench report "$results.jsonl" --format md --output "$results.md"
python3 -m quantbench report "$results.jsonl" --html "$results.html" --format json --output "$results.summary.json"
echo "$name took $(( $(date +%s) - start )) s"
cp "$results".* "$OUT"/ 2>/dev/null
