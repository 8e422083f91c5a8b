#!/usr/bin/env bash
# P processes on one machine: eval/multi_gpu.sh 4 data/chest/manifest.csv synth/chest reports/chest
set -euo pipefail
p=$1 real=$2 synthetic=$3 out=$4; shift 4
exec accelerate launch --multi_gpu --num_processes "$p" -m synthgen eval all \
  --real "$real" --synthetic "$synthetic" --out "$out" "$@"
