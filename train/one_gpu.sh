#!/usr/bin/env bash
# One process on GPU 0: train/one_gpu.sh configs/ae-chest2d.yaml data.manifest=... out=...
set -euo pipefail
stage=${STAGE:-ae}
CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} exec synthgen train "$stage" --config "$@"
