#!/usr/bin/env bash
# N CPU processes over gloo (no GPU needed): train/cpu_processes.sh 2 configs/ae-chest2d.yaml ...
set -euo pipefail
n=$1; shift
stage=${STAGE:-ae}
exec python -m torch.distributed.run --standalone --nproc_per_node "$n" \
  -m synthgen train "$stage" --config "$@"
