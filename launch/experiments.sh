#!/usr/bin/env bash
# The paper's experiments on MedNIST under its full protocol (30 epochs, DIGITS' settings): Table II, then the
# learning curve (four networks x seven training-set sizes x three seeds). Long: run it on GPUs.
#   bash launch/experiments.sh [outdir]
# Change: MANUAL_DIR (folder holding MedNIST.tar.gz when offline); OVERRIDES (e.g. "--override=dtype=bfloat16"),
# FRACTIONS and SEEDS. Both runners skip finished runs, so rerun the script after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-workdirs/experiments}
MANUAL_DIR=${MANUAL_DIR:-../shared/data}
FRACTIONS=${FRACTIONS:-0.01,0.02,0.05,0.1,0.2,0.5,1}
SEEDS=${SEEDS:-0,1,2}
OVERRIDES=${OVERRIDES:-}
MODELS=${MODELS:-lenet,alexnet,googlenet,proposed}  # The paper's four (every registered network: the resnets too).
"${PYTHON:-.venv/bin/python}" -m anatomy_jax.experiments.table2 --outdir="$OUT/table2" --models="$MODELS" --override=manual_dir="$MANUAL_DIR" $OVERRIDES
"${PYTHON:-.venv/bin/python}" -m anatomy_jax.experiments.learning_curve --outdir="$OUT/learning_curve" --models="$MODELS" \
  --override=manual_dir="$MANUAL_DIR" --fractions="$FRACTIONS" --seeds="$SEEDS" $OVERRIDES
