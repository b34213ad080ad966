#!/usr/bin/env bash
# The paper's Tables 1-5 on one GPU machine (Aktemur et al., arXiv 2404.08573; issue 25), in one go:
#
#   1. installs what the machine lacks (mpi4py, the mpich wheel, h5py, tqdm, matplotlib, pandas) from the
#      wheels it is given (--wheels DIR: no index is reached), unless they import already; pffbench itself
#      runs from this checkout (PYTHONPATH) where it is not installed;
#   2. runs each variant once on the device (--device cuda has not run before: a small net, 2 epochs),
#      into OUT/gpu-variants.h5;
#   3. runs every preset row of `pffbench run --list-presets` (the paper's rows and paper-net),
#      --jobs at a time on the one GPU, each with --device cuda and its own checkpoint folder, into
#      OUT/paper-gpu.h5; at the deadline every row still running is stopped at its next epoch boundary
#      (SIGTERM: recorded as stopped, with the epochs it finished), so the script ends in time; a row
#      still running --grace seconds later is killed (its checkpoint stays; the script then exits 1);
#   4. prints the table of what it measured (pffbench report) and says which rows finished.
#
#   bash tools/paper_gpu.sh OUT_DIR [--wheels DIR] [--deadline S] [--grace S] [--jobs N] [--epochs N]
#                                   [--skip-variants] [--dry-run]
#
# --deadline: seconds the rows get from the moment the first starts (default 300: with the install, about a
# minute from wheels, the variant pass, about 2, and --grace, the script ends within 9 minutes; no row
# starts in its last 30 s, so every row that starts gets past its set-up and is recorded); --grace:
# seconds a stopped row may take to reach its epoch boundary (default 60); --jobs: rows at once (default 22:
# all); --epochs: override the presets' 100 (E epochs in E chapters); --skip-variants: no variant pass.
# --dry-run: the same control flow on the CPU, each row 4 epochs (in 4 chapters) of
# a small net (hidden 32 x 4), 2 rows at a time, every row and variant on the synthetic data set (2,000
# rows: the control flow, not the learning, in a few minutes): what tests/jobs/test_paper_gpu.py runs.  CIFAR-10 rows read the official data from PFFBENCH_DATA, else its
# JPEG copy there (cifar10-jpeg/, an image folder).  Environment: PYTHON (default python3),
# PFFBENCH_DATA (the data sets), MPIEXEC_FLAGS (e.g. --oversubscribe for Open MPI).  Exit status: 0 when every step ran (rows stopped by the deadline
# included: the table says so), 1 when a row or variant failed, 2 on bad arguments.
set -uo pipefail
usage() { echo "usage: bash tools/paper_gpu.sh OUT_DIR [--wheels DIR] [--deadline S] [--jobs N] [--epochs N] [--dry-run]" >&2; exit 2; }
[ $# -ge 1 ] || usage
OUT="$1"; shift
WHEELS="" DEADLINE=300 GRACE=60 JOBS=22 EPOCHS="" DRY=0 VARIANT_PASS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="${2:?}"; shift 2 ;;
    --deadline) DEADLINE="${2:?}"; shift 2 ;;
    --grace) GRACE="${2:?}"; shift 2 ;;
    --skip-variants) VARIANT_PASS=0; shift ;;
    --jobs) JOBS="${2:?}"; shift 2 ;;
    --epochs) EPOCHS="${2:?}"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    *) echo "paper_gpu: unknown argument $1" >&2; usage ;;
  esac
done
for n in "$DEADLINE" "$GRACE" "$JOBS" ${EPOCHS:+"$EPOCHS"}; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "paper_gpu: --deadline, --grace, --jobs and --epochs take positive integers, got $n" >&2; exit 2; }
done
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT" || { echo "paper_gpu: cannot make $OUT" >&2; exit 2; }
OUT="$(cd "$OUT" && pwd)"
START=$SECONDS
cd "$ROOT"

# 1. what the machine lacks
if ! "$PYTHON" -c "import mpi4py, h5py, tqdm, pffbench" 2>/dev/null; then
  if [ -n "$WHEELS" ]; then
    "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" mpi4py mpich h5py tqdm matplotlib pandas \
      || { echo "paper_gpu: could not install from $WHEELS" >&2; exit 1; }
  fi
  "$PYTHON" -c "import pffbench" 2>/dev/null || export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  "$PYTHON" -c "import mpi4py, h5py, pffbench" || { echo "paper_gpu: mpi4py/h5py missing: give --wheels DIR" >&2; exit 1; }
fi
MPIEXEC="$(dirname "$(command -v "$PYTHON")")/mpiexec"
[ -x "$MPIEXEC" ] || MPIEXEC="$(command -v mpiexec)" || { echo "paper_gpu: no mpiexec" >&2; exit 1; }
read -ra FLAGS <<< "${MPIEXEC_FLAGS:-}"
if [ "$DRY" = 1 ]; then
  # 4 epochs in 4 chapters: All-Layers needs a chapter per rank
  DEVICE=cpu; SMALL=(--layers 32,32,32,32 --epochs 4 --threads 1); DATA=(--dataset synthetic)
  [ "$JOBS" = 22 ] && JOBS=2
else
  DEVICE=cuda; SMALL=(--threads 1 ${EPOCHS:+--epochs "$EPOCHS"}); DATA=()
fi
failed=0

# 2. each variant once on the device
[ "$VARIANT_PASS" = 1 ] && echo "paper_gpu: each variant once on $DEVICE ($((SECONDS - START)) s)"
[ "$VARIANT_PASS" = 1 ] && for spec in "1 pipeline" "2 pipeline" "2 single-layer" "2 all-layers" "2 federated" "2 perf-opt" "1 backprop" \
            "2 dp-backprop" "2 ddp" "2 gpipe" "2 1f1b"; do
  read -r ranks variant <<< "$spec"
  timeout 300 "$MPIEXEC" "${FLAGS[@]}" -n "$ranks" "$PYTHON" -m pffbench.run --variant "$variant" --layers 64,64 --epochs 2 \
    --threads 1 "${DATA[@]}" --device "$DEVICE" --out "$OUT/gpu-variants.h5" --name "$variant-p$ranks" --quiet \
    > "$OUT/variant-$variant-p$ranks.log" 2>&1 \
    || { echo "paper_gpu: $variant on $ranks rank(s) failed (see $OUT/variant-$variant-p$ranks.log)" >&2; failed=1; }
done

# 3. every row, --jobs at a time, until the deadline
mapfile -t ROWS < <("$PYTHON" -m pffbench.run --list-presets | awk 'NR > 1 && $2 ~ /^[0-9]+$/ {print $1, $2}')
[ "${#ROWS[@]}" -gt 0 ] || { echo "paper_gpu: no presets listed" >&2; exit 1; }
echo "paper_gpu: ${#ROWS[@]} rows, $JOBS at a time, on $DEVICE ($((SECONDS - START)) s)"
row() {  # row NAME RANKS: one preset on the device, its log beside the results
  local extra=("${DATA[@]}") data="${PFFBENCH_DATA:-$ROOT/data}"
  if [[ "$1" == cifar10-* ]] && [ "$DRY" = 0 ]; then
    if [ ! -e "$data/cifar-10-python.tar.gz" ] && [ ! -d "$data/cifar-10-batches-py" ] && [ -d "$data/cifar10-jpeg" ]; then
      extra=(--dataset imagefolder --data-dir "$data/cifar10-jpeg")  # "CIFAR-10 (JPEG copy)"
    fi
  fi
  "$MPIEXEC" "${FLAGS[@]}" -n "$2" "$PYTHON" -m pffbench.run --preset "$1" "${SMALL[@]}" "${extra[@]}" --device "$DEVICE" \
    --out "$OUT/paper-gpu.h5" --name "$1" --checkpoint-dir "$OUT/checkpoints/$1" --quiet > "$OUT/row-$1.log" 2>&1
}
descendants() { local child; for child in $(pgrep -P "$1"); do echo "$child"; descendants "$child"; done; }
ranks_of_rows() {  # the python ranks below this script's rows (not another job's pffbench)
  local pid
  for pid in "${PIDS[@]}"; do
    for child in $(descendants "$pid"); do
      [ "$(head -c 6 "/proc/$child/comm" 2>/dev/null)" = python ] && echo "$child"
    done
  done
}
stop_rows() {  # SIGTERM to every rank: each stops at its next epoch boundary and is recorded as stopped
  local ranks waited=0
  ranks=$(ranks_of_rows)
  [ -n "$ranks" ] && kill -TERM $ranks 2>/dev/null
  while [ -n "$(jobs -rp)" ] && [ $waited -lt "$GRACE" ]; do sleep 1; waited=$((waited + 1)); done
  ranks=$(ranks_of_rows)
  [ -n "$ranks" ] && kill -KILL $ranks 2>/dev/null
}
declare -A PIDS=()
ROWS_START=$SECONDS
late() { [ $((SECONDS - ROWS_START)) -ge "$DEADLINE" ]; }
# no row starts in the last SETUP seconds: one stopped while it still imports and loads could not record itself
SETUP=30
too_late_to_start() { [ $((SECONDS - ROWS_START)) -ge $((DEADLINE - SETUP)) ] && [ "${#PIDS[@]}" -gt 0 ]; }
for line in "${ROWS[@]}"; do
  read -r name ranks <<< "$line"
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ] && ! too_late_to_start; do sleep 1; done  # polled, not wait -n
  too_late_to_start && break
  row "$name" "$ranks" & PIDS[$name]=$!
done
while [ -n "$(jobs -rp)" ]; do
  if late; then
    echo "paper_gpu: deadline ($DEADLINE s): stopping the rows still running at their next epoch boundary"
    stop_rows; break
  fi
  sleep 2
done
for name in "${!PIDS[@]}"; do
  wait "${PIDS[$name]}"; code=$?
  case $code in
    0|143|130) ;;  # complete, or stopped by the deadline (recorded with its epochs)
    137) echo "paper_gpu: row $name did not stop within --grace $GRACE s and was killed (its checkpoint is in $OUT/checkpoints/$name)" >&2; failed=1 ;;
    *) echo "paper_gpu: row $name failed (exit $code; see $OUT/row-$name.log)" >&2; failed=1 ;;
  esac
done
not_started=$(( ${#ROWS[@]} - ${#PIDS[@]} ))
[ "$not_started" -gt 0 ] && echo "paper_gpu: $not_started row(s) not started before the deadline"

# 4. what was measured
echo "paper_gpu: done in $((SECONDS - START)) s; the rows (status complete or stopped, with their epochs):"
"$PYTHON" -m pffbench.report "$OUT/paper-gpu.h5" --format markdown || failed=1
exit $failed
