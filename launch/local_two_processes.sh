#!/usr/bin/env bash
# Try the multi-host path on one computer: two processes on localhost, each with two (fake) CPU devices, joined
# by jax.distributed over a local port. Results match one process with four devices (tests/test_parallel.py).
#   bash launch/local_two_processes.sh configs/lenet.py workdirs/two --config.train_fraction=0.05 --config.num_epochs=1
# Change: PORT if 12355 is taken; DEVICES per process; MANUAL_DIR (folder holding MedNIST.tar.gz when offline);
# PYTHON (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-configs/lenet.py}
WORKDIR=${2:-workdirs/two_processes}
PORT=${PORT:-12355}
DEVICES=${DEVICES:-2}
MANUAL_DIR=${MANUAL_DIR:-../shared/data}
shift $(( $# > 2 ? 2 : $# ))
mkdir -p "$(dirname "$WORKDIR")"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for i in 0 1; do
  JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=$DEVICES \
    "${PYTHON:-.venv/bin/python}" -m anatomy_jax.main --config="$CONFIG" --workdir="$WORKDIR" \
    --config.manual_dir="$MANUAL_DIR" --coordinator_address=localhost:$PORT --num_processes=2 --process_id=$i \
    "$@" > "$WORKDIR.process$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
tail -n 3 "$WORKDIR.process0.log"
exit $status
