#!/usr/bin/env bash
# P CPU processes over gloo (no GPU needed): sample/cpu_processes.sh 2 runs/ldm-chest 64 synth/t
set -euo pipefail
p=$1 ck=$2 n=$3 out=$4; shift 4
ACCELERATE_USE_CPU=1 exec python -m torch.distributed.run --standalone --nproc_per_node "$p" \
  -m synthgen sample --checkpoint "$ck" --num-samples "$n" --out "$out" "$@"
