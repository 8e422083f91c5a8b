#!/usr/bin/env bash
# One process on GPU 0: sample/one_gpu.sh runs/ldm-chest 10000 synth/chest --balance sex,nodule
set -euo pipefail
ck=$1 n=$2 out=$3; shift 3
CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} exec synthgen sample \
  --checkpoint "$ck" --num-samples "$n" --out "$out" "$@"
