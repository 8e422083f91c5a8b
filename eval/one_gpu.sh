#!/usr/bin/env bash
# One process on GPU 0: eval/one_gpu.sh data/chest/manifest.csv synth/chest reports/chest --balance site
set -euo pipefail
real=$1 synthetic=$2 out=$3; shift 3
CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} exec synthgen eval all \
  --real "$real" --synthetic "$synthetic" --out "$out" "$@"
