#!/usr/bin/env bash
# One model's full matrix on the GPU; results accumulate in /tmp/results and are copied to $OUT.
# usage: bash benchmarks/gpu/matrix.sh MODEL NAME [extra quantbench run options]
source benchmarks/gpu/setup.sh
model=$1; name=$2; shift 2
start=$(date +%s)
python3 -m quantbench run "$model" --results /tmp/results/$name.jsonl "$@" 2>&1 | tail -60
python3 -m quantbench report /tmp/results/$name.jsonl --format md --output /tmp/results/$name.md
python3 -m quantbench report /tmp/results/$name.jsonl --html /tmp/results/$name.html --format json --output /tmp/results/$name.summary.json
echo "$name took $(( $(date +%s) - start )) s"
cp /tmp/results/$name.* "$OUT"/ 2>/dev/null
