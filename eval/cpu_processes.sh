#!/usr/bin/env bash
# P CPU processes over gloo (no GPU needed): eval/cpu_processes.sh 2 data/m.csv synth/t reports/t
set -euo pipefail
p=$1 real=$2 synthetic=$3 out=$4; shift 4
ACCELERATE_USE_CPU=1 exec python -m torch.distributed.run --standalone --nproc_per_node "$p" \
  -m synthgen eval all --real "$real" --synthetic "$synthetic" --out "$out" "$@"
