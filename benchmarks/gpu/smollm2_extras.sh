#!/usr/bin/env bash
# SmolLM2 on the GPU beyond the bitsandbytes matrix: QLoRA + optimizers (paged ones are
# GPU-only), the torchao / HQQ / quanto rows, and the fast engine's tokens on real weights.
# Each part is bounded by `timeout` so that one slow part cannot starve the next.
source benchmarks/gpu/setup.sh
mkdir -p "$OUT/ft"
timeout 170 python3 benchmarks/finetune_gpu.py --models smollm2-135m --steps 20 --out "$OUT/ft" 2>&1 | tail -15
timeout 240 python3 -m quantbench run smollm2-135m --results "$OUT/backends.jsonl" \
  -p torchao-int8,torchao-int4,torchao-fp8,hqq-4bit,quanto-int8,quanto-int4 \
  --batch-sizes 1,4 --prompt-lengths 128,512 --new-tokens 32 2>&1 | tail -25
python3 -m quantbench report "$OUT/backends.jsonl" --format md --output "$OUT/backends.md"
timeout 130 python3 benchmarks/decode_speed.py --model smollm2-135m --precisions bf16,nf4 \
  --out "$OUT" --name smollm2_decode 2>&1 | tail -15
ls -R "$OUT"
