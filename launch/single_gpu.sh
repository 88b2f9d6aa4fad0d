#!/usr/bin/env bash
# Train one network on one GPU (the first one; change GPU to pick another).
#   bash launch/single_gpu.sh [configs/proposed.py] [workdir] [--config.FIELD=VALUE ...]
# Change: CONFIG and WORKDIR below or on the command line; MANUAL_DIR if the machine is offline (folder holding
# MedNIST.tar.gz). The global batch is the config's batch_size.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-configs/proposed.py}
WORKDIR=${2:-workdirs/$(basename "$CONFIG" .py)}
GPU=${GPU:-0}
MANUAL_DIR=${MANUAL_DIR:-}
shift $(( $# > 2 ? 2 : $# ))
extra=()
[ -n "$MANUAL_DIR" ] && extra+=("--config.manual_dir=$MANUAL_DIR")
CUDA_VISIBLE_DEVICES=$GPU exec "${PYTHON:-.venv/bin/python}" -m anatomy_jax.main --config="$CONFIG" --workdir="$WORKDIR" \
  "${extra[@]}" "$@"
