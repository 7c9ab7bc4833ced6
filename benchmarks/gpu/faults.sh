#!/usr/bin/env bash
# Faults on a real GPU, as evidence: a CUDA out-of-memory is that precision's answer and the
# sweep goes on (exit 0); a worker killed with SIGKILL mid-measurement is recorded as crashed
# (exit 1) and a rerun redoes only it (exit 0).
#
# usage (repository root, one H100 80GB): bash benchmarks/gpu/faults.sh [oom|kill|all]
# writes to $OUT: faults-oom.jsonl, faults-kill.jsonl, faults.md (and the runs' output).
#
# oom:  no -arch alias needs more than 80 GB in fp32, so a ballast process first takes all but
#       FREE_GIB (default 3) of the card; then OOM_MODEL (default tinyllama-1.1b-arch) in fp32
#       (4.4 GB of weights) does not fit while nf4 (0.8 GB) does. The ballast is another process on the GPU, so nf4's
#       timings must come back flagged as taken on a shared device.
# kill: tinyllama-1.1b-arch fp16,nf4,int8; nf4's worker is killed with SIGKILL KILL_AFTER
#       seconds (default 20) after it starts; then the same command again.
# Each part takes 3-5 minutes on a fresh machine (random weights are built once).
source benchmarks/gpu/setup.sh
set -u
part=${1:-all}
OUT=${OUT:-$QB_WORK/results}
mkdir -p "$OUT"
FREE_GIB=${FREE_GIB:-3}
OOM_MODEL=${OOM_MODEL:-tinyllama-1.1b-arch}
KILL_AFTER=${KILL_AFTER:-20}
LIGHT=(--prompt-lengths 128 --batch-sizes 1,4 --new-tokens 16 --repeats 2 --no-quality)
md=$OUT/faults.md
[ -f "$md" ] || printf '# Faults on %s\n\n' "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" > "$md"

statuses() {  # one line per Result: precision, status, shared device, timestamp
  python3 - "$1" <<'EOF'
import sys
from quantbench.results import read_results
for r in read_results(sys.argv[1])[0]:
    status = r.error or "ok"
    shared = f"; shared device: {r.shared_device}" if r.shared_device else ""
    decode = r.metrics.get("decode_ms_per_token")
    speed = f"; decode {decode:.2f} ms/token" if decode else ""
    print(f"- {r.spec.precision}: {status}{speed}{shared} ({r.timestamp}, key {r.key})")
EOF
}

if [ "$part" = oom ] || [ "$part" = all ]; then
  results=$OUT/faults-oom.jsonl; rm -f "$results"
  python3 -c "from quantbench.models import resolve; resolve('$OOM_MODEL')"  # weights before ballast
  python3 -u - "$FREE_GIB" > /tmp/ballast.log 2>&1 <<'EOF' &
import sys, time, torch
free, total = torch.cuda.mem_get_info()
keep = int(float(sys.argv[1]) * 2**30)
ballast = torch.empty(max(free - keep, 0), dtype=torch.uint8, device="cuda")
print(f"ballast {ballast.numel() / 2**30:.1f} GiB of {total / 2**30:.1f} GiB; free now "
      f"{torch.cuda.mem_get_info()[0] / 2**30:.1f} GiB", flush=True)
time.sleep(3600)
EOF
  ballast=$!
  until grep -q ballast /tmp/ballast.log 2>/dev/null || ! kill -0 $ballast 2>/dev/null; do sleep 1; done
  cat /tmp/ballast.log
  python3 -m quantbench run "$OOM_MODEL" -p fp32,nf4 -o "$results" "${LIGHT[@]}" > "$OUT/faults-oom.out" 2>&1
  code=$?
  kill $ballast; wait $ballast 2>/dev/null
  tail -n 25 "$OUT/faults-oom.out"
  {
    printf '## CUDA out of memory is an answer\n\n'
    printf '%s; `quantbench run %s -p fp32,nf4 %s`: exit %s\n\n' "$(cat /tmp/ballast.log)" "$OOM_MODEL" "${LIGHT[*]}" "$code"
    statuses "$results"
    printf '\n'
  } >> "$md"
fi

if [ "$part" = kill ] || [ "$part" = all ]; then
  results=$OUT/faults-kill.jsonl; rm -f "$results"
  cmd=(python3 -m quantbench run tinyllama-1.1b-arch -p fp16,nf4,int8 -o "$results" "${LIGHT[@]}")
  "${cmd[@]}" > "$OUT/faults-kill-1.out" 2>&1 &
  sweep=$!
  victim=""
  # the second worker is nf4's: the first line in the results file is fp16's
  until [ -n "$victim" ] || ! kill -0 $sweep 2>/dev/null; do
    if [ -s "$results" ]; then victim=$(pgrep -n -f "quantbench.worker"); fi
    sleep 1
  done
  sleep "$KILL_AFTER"
  alive=$(ps -o etime= -p "$victim" | tr -d ' ')
  echo "killing worker $victim, alive for ${alive:-?}: $(ps -o args= -p "$victim")"
  kill -9 "$victim"
  wait $sweep; first=$?
  before=$(wc -l < "$results")
  "${cmd[@]}" > "$OUT/faults-kill-2.out" 2>&1; second=$?
  after=$(wc -l < "$results")
  tail -n 25 "$OUT/faults-kill-1.out" "$OUT/faults-kill-2.out"
  {
    printf '## A worker killed mid-measurement, then a rerun\n\n'
    printf '`%s`; the nf4 worker (pid %s) was killed with SIGKILL after %s (elapsed).\n\n' \
      "quantbench run tinyllama-1.1b-arch -p fp16,nf4,int8 ${LIGHT[*]}" "$victim" "${alive:-?}"
    printf 'First run: exit %s, %s lines. Rerun of the same command: exit %s, %s lines.\n\n' \
      "$first" "$before" "$second" "$after"
    statuses "$results"
    printf '\n'
  } >> "$md"
fi
cat "$md"
