#!/usr/bin/env bash
# The whole GPU check in one command: the four networks' benchmarks (bfloat16, PyTorch peers eager and
# compiled), then the paper's full Table II (four networks, 30 epochs, all of MedNIST, DIGITS' settings,
# bfloat16). Each result is written as soon as it exists (OUTDIR/bench_<model>.json, OUTDIR/speed.md after each
# benchmark, OUTDIR/table2/<model>/results.json and OUTDIR/table2/table2.md after each network), so a cut run
# leaves everything finished before the cut; rerunning skips finished Table II runs and resumes the rest.
# Sized for about 9 minutes on one H100 (set STEPS/REPEATS lower, or MODELS, to shorten it).
#   bash launch/gpu_check.sh OUTDIR [DIR_WITH_MEDNIST]
# Change: PYTHON (default .venv/bin/python), MODELS, TORCH (eager,compile; '' for none), STEPS, REPEATS,
# EXTRA (more overrides for every run, e.g. "--override=num_epochs=3"). QUICK=1: a dry run of the same sequence
# with the :tiny variant on 1% of MedNIST (for a CPU, to check the script).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash launch/gpu_check.sh OUTDIR [DIR_WITH_MEDNIST]}
DATA=${2:-../shared/data}
PY=${PYTHON:-.venv/bin/python}
MODELS=${MODELS:-lenet proposed alexnet googlenet}
TORCH=${TORCH-eager,compile}
STEPS=${STEPS:-20}
REPEATS=${REPEATS:-5}
EXTRA=${EXTRA:-}
VARIANT=''
if [ "${QUICK:-0}" = 1 ]; then
  VARIANT=':tiny'; STEPS=2; REPEATS=1; EXTRA="--override=train_fraction=0.01 --override=num_epochs=1 $EXTRA"
fi
mkdir -p "$OUT"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/log"; }
log "GPU check in $OUT: $($PY -c 'import jax; print(jax.devices())' 2>/dev/null)"
for m in $MODELS; do
  log "benchmark $m"
  $PY -m anatomy_jax.benchmark --config="configs/$m.py$VARIANT" --config.manual_dir="$DATA" --config.dtype=bfloat16 \
    --steps="$STEPS" --repeats="$REPEATS" --torch="$TORCH" --output="$OUT/bench_$m.json" \
    $(echo "$EXTRA" | sed 's/--override=/--config./g') > "$OUT/bench_$m.log" 2>&1 || log "benchmark $m failed (see bench_$m.log)"
  tail -n 1 "$OUT/bench_$m.log" | tee -a "$OUT/log"
  ls "$OUT"/bench_*.json > /dev/null 2>&1 && $PY -m anatomy_jax.benchmark --table "$OUT"/bench_*.json > "$OUT/speed.md"
done
log "Table II: $MODELS, full protocol, bfloat16"
$PY -m anatomy_jax.experiments.table2 --outdir="$OUT/table2" --models="$(echo $MODELS | tr ' ' ',')" \
  --override=manual_dir="$DATA" --override=dtype=bfloat16 ${VARIANT:+--variant=tiny} $EXTRA > "$OUT/table2.log" 2>&1 \
  || log "Table II stopped (see table2.log)"
[ -f "$OUT/table2/table2.md" ] && cat "$OUT/table2/table2.md" | tee -a "$OUT/log"
log "done"
