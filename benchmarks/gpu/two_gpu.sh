#!/usr/bin/env bash
# Two GPUs of one host: accelerate's split (sharded inference) against the same run on one GPU,
# a model that only fits split, caps too small for the model, and data-parallel QLoRA against
# one process. Writes JSONL + Markdown per part to $OUT.
# usage (on a 2-GPU machine): bash benchmarks/gpu/two_gpu.sh
source benchmarks/gpu/setup.sh
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -c 'import torch; print("GPUs:", torch.cuda.device_count())'
qb() { python3 -m quantbench "$@"; }
R=$QB_WORK/results  # set by setup.sh
common=(--batch-sizes 1,4 --prompt-lengths 128,512 --new-tokens 32 --no-quality)

# 1. Sharded 7B architecture (most layers on GPU 1) and its single-GPU twin.
qb run llama-2-7b-arch -p fp16,nf4 "${common[@]}" --device-map auto --max-memory 0=8GiB,1=80GiB \
  --results $R/split-7b.jsonl 2>&1 | tail -25
CUDA_VISIBLE_DEVICES=0 qb run llama-2-7b-arch -p fp16,nf4 "${common[@]}" \
  --results $R/single-7b.jsonl 2>&1 | tail -25
qb estimate llama-2-7b-arch -p fp16,nf4 --gpus 2 --json > $R/estimate-7b-2gpu.json

# 2. 13B architecture in fp16 (~26 GB of weights) under 16 GiB per GPU: runs only split.
qb run llama-2-13b-arch -p fp16 "${common[@]}" --device-map auto --max-memory 0=16GiB,1=16GiB \
  --results $R/split-13b.jsonl 2>&1 | tail -25
# Caps too small for the model together: one line (exit 2) or an OOM result, never a hang.
timeout 300 python3 -m quantbench run llama-2-13b-arch -p fp16 "${common[@]}" --device-map auto \
  --max-memory 0=4GiB,1=4GiB --results $R/too-small-13b.jsonl; echo "too-small caps exit: $?"

# 3. Data-parallel QLoRA: two processes against one.
ft=(smollm2-135m -p nf4 --max-steps 30 --batch-size 4 --grad-accum 1 --seq-len 256)
CUDA_VISIBLE_DEVICES=0 qb finetune train "${ft[@]}" -o $R/ft-1proc --results $R/finetune.jsonl 2>&1 | tail -8
accelerate launch --multi_gpu --num_processes 2 -m quantbench finetune train "${ft[@]}" \
  -o $R/ft-2proc --results $R/finetune.jsonl 2>&1 | tail -8

for f in split-7b single-7b split-13b finetune; do
  qb report $R/$f.jsonl --format md --output $R/$f.md 2>/dev/null
done
cp $R/split-7b.jsonl $R/single-7b.jsonl $R/split-13b.jsonl $R/finetune.jsonl $R/estimate-7b-2gpu.json \
  $R/split-7b.md $R/split-13b.md $R/finetune.md "$OUT"/ 2>/dev/null
