#!/usr/bin/env bash
# N processes (DDP) on one machine: train/multi_gpu.sh 4 configs/ae-chest2d.yaml out=runs/ae
set -euo pipefail
n=$1; shift
stage=${STAGE:-ae}
exec accelerate launch --multi_gpu --num_processes "$n" -m synthgen train "$stage" --config "$@"
