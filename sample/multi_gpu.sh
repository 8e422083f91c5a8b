#!/usr/bin/env bash
# P processes on one machine: sample/multi_gpu.sh 4 runs/ldm-chest 100000 synth/chest --match m.csv
set -euo pipefail
p=$1 ck=$2 n=$3 out=$4; shift 4
exec accelerate launch --multi_gpu --num_processes "$p" -m synthgen sample \
  --checkpoint "$ck" --num-samples "$n" --out "$out" "$@"
