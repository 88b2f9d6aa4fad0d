#!/usr/bin/env bash
# Train one network data-parallel over every GPU of this machine (one process, jit with shardings by default).
#   bash launch/all_gpus.sh [configs/proposed.py] [workdir] [--config.FIELD=VALUE ...]
# Change: PARALLELISM=pmap to use the pmap wrapper instead; the config's batch_size is the GLOBAL batch and must
# be divisible by the number of GPUs (see docs/gpus.md on batch size and learning rate across device counts).
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-configs/proposed.py}
WORKDIR=${2:-workdirs/$(basename "$CONFIG" .py)_allgpus}
PARALLELISM=${PARALLELISM:-jit}
MANUAL_DIR=${MANUAL_DIR:-}
shift $(( $# > 2 ? 2 : $# ))
extra=()
[ -n "$MANUAL_DIR" ] && extra+=("--config.manual_dir=$MANUAL_DIR")
exec "${PYTHON:-.venv/bin/python}" -m anatomy_jax.main --config="$CONFIG" --workdir="$WORKDIR" \
  --config.parallelism="$PARALLELISM" "${extra[@]}" "$@"
