#!/usr/bin/env bash
# Calibrated 4-bit rows (gptq-4bit, awq-4bit) next to bitsandbytes NF4 on one GPU, plus the
# backend rows not measured there before: quanto-int8 / quanto-int4, the fast engine on the
# torchao and HQQ rows, and what torchao-int4 leaves unquantized. Run from the repository root:
#   bash benchmarks/gpu/calibrated.sh [smollm2|quanto|smollm2-fast|tinyllama|all]
# Each part is one bounded command (at most 7 minutes on an H100: a worker takes 20-100 s, a
# calibration 10-30 s on top); `all` runs them one after another. A part stopped by its limit is
# resumed by running it again: rows already in the results file are kept, the rest measured.   (writes under $OUT, default benchmarks/results/h100/calibrated)
#
# Wheels beyond torch / transformers / accelerate / peft travel in .whl/ (setup.sh installs them
# with --no-deps into $QB_WORK/site). Fetch them once, on a machine with a network, for CPython 3.12:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl \
#     llmcompressor==0.14.0.1 compressed-tensors==0.19.0 auto-round==0.15.1 loguru==0.7.3 \
#     datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 torchao==0.18.0 termcolor==3.3.0 \
#     optimum-quanto==0.2.7 pydantic pydantic-core annotated-types typing-inspection
#   pip wheel --no-deps -w .whl hqq==0.2.8.post1          (hqq ships a source distribution only)
# and bitsandbytes + gguf as setup.sh says; the machine image already has pandas, pyarrow,
# xxhash, einops, ninja and nvidia-ml-py.
# (plus the SmolLM2 GGUF parts that setup.sh describes). Calibration's default is 16 samples of
# 256 tokens of the shipped calibration text; each calibrated checkpoint is cached in
# $QUANTBENCH_CACHE, so the fast-engine pass below reuses the one the eager pass made.
set -u
source benchmarks/gpu/setup.sh
part=${1:-all}
committed=benchmarks/results/h100/calibrated
OUT=${OUT:-$committed}
mkdir -p "$OUT"
for name in smollm2 smollm2_fast tinyllama; do  # an OUT elsewhere resumes from the committed rows
  [ -f "$committed/$name.jsonl" ] && [ ! -f "$OUT/$name.jsonl" ] && cp "$committed/$name.jsonl" "$OUT/"
done
python3 -c "import llmcompressor, compressed_tensors, torchao, hqq, optimum.quanto as q; \
print('llmcompressor', llmcompressor.__version__, 'compressed-tensors', compressed_tensors.__version__, \
'torchao', torchao.__version__)" 2>&1 | tail -1 | tee "$OUT/versions.txt"
light=(--batch-sizes 1,4 --prompt-lengths 128 --new-tokens 32)

if [ "$part" = smollm2 ] || [ "$part" = all ]; then
  # 1. SmolLM2 (real weights): quality (whole held-out passage), memory, eager decode; reference bf16
  timeout 420 python3 -m quantbench run smollm2-135m --results "$OUT/smollm2.jsonl" \
    -p bf16,nf4,gptq-4bit,awq-4bit "${light[@]}" 2>&1 | tail -20
  du -b -s "$OUT"/smollm2.jsonl.ref "$OUT"/smollm2.jsonl.logs 2>/dev/null | tee "$OUT/side_files.txt"
fi

if [ "$part" = quanto ] || [ "$part" = all ]; then
  # 1b. quanto's rows in the same results file (the bf16 reference is already there)
  timeout 420 python3 -m quantbench run smollm2-135m --results "$OUT/smollm2.jsonl" \
    -p bf16,quanto-int8,quanto-int4 "${light[@]}" 2>&1 | tail -20
fi

if [ "$part" = smollm2-fast ] || [ "$part" = all ]; then
  # 2. the fast engine (static cache, compiled decode step) on the 4-bit and int8 rows
  timeout 420 python3 -m quantbench run smollm2-135m --results "$OUT/smollm2_fast.jsonl" --engine fast \
    -p bf16,nf4,gptq-4bit,awq-4bit,torchao-int8,torchao-int4,hqq-4bit,int8,nf4-dq,quanto-int8,quanto-int4 --no-quality \
    --batch-sizes 1 --prompt-lengths 128 --new-tokens 32 2>&1 | tail -20
  python3 -m quantbench inspect smollm2-135m -p torchao-int4 --json > "$OUT/inspect_torchao-int4.json" 2>&1
fi

if [ "$part" = tinyllama ] || [ "$part" = all ]; then
  # 3. the 1.1B architecture (random weights, calibrated on seeded random ids): memory and speed
  timeout 420 python3 -m quantbench run tinyllama-1.1b-arch --results "$OUT/tinyllama.jsonl" \
    -p fp16,nf4,gptq-4bit,awq-4bit --no-quality "${light[@]}" 2>&1 | tail -15
fi

for name in smollm2 smollm2_fast tinyllama; do
  [ -f "$OUT/$name.jsonl" ] && python3 -m quantbench report "$OUT/$name.jsonl" --format md --output "$OUT/$name.md"
done
pip list 2>/dev/null | grep -iE "^(torch|transformers|llmcompressor|compressed-tensors|torchao|hqq|optimum-quanto|bitsandbytes) " \
  >> "$OUT/versions.txt"
ls "$OUT"
