#!/usr/bin/env bash
# The paper's Tables 1-5 on one GPU machine (Aktemur et al., arXiv 2404.08573; issue 25), in one go:
#
#   1. installs what the machine lacks (mpi4py, the mpich wheel, h5py, tqdm: what `pffbench run` and
#      `pffbench report` import) from the wheels it is given (--wheels DIR: no index is reached; into the
#      user's site-packages where the system's refuses), unless they import already, then checks that
#      mpiexec starts 2 ranks; pffbench itself runs from this checkout (PYTHONPATH) where it is not installed;
#   2. runs each variant once on the device (--device cuda has not run before: a small net, 2 epochs), all
#      at once on a GPU machine (a check that each runs, not a timing), one at a time in --dry-run, into
#      OUT/gpu-variants.h5; ddp, gpipe and 1f1b run on at most as many ranks as there are GPUs (NCCL needs a
#      GPU per rank: pffbench refuses fewer in one line);
#   3. runs the preset rows of `pffbench run --list-presets` (the paper's rows and paper-net) in that order,
#      as many at once as --ranks allows, each with --device cuda and its own checkpoint folder (under
#      $TMPDIR, not OUT: an All-Layers rank writes ~54 MB a chapter), into OUT/paper-gpu.h5; CIFAR-10 rows
#      are skipped, with a line, where PFFBENCH_DATA holds no CIFAR-10; at the deadline every row still
#      running is stopped at its next epoch boundary (SIGTERM: recorded as stopped, with the epochs it
#      finished), so the script ends in time; a row still running --grace seconds later is killed (the
#      script then exits 1);
#   4. prints the table of what it measured (pffbench report) and says which rows finished.
#
#   bash tools/paper_gpu.sh OUT_DIR [--wheels DIR] [--budget S] [--deadline S] [--grace S] [--ranks N]
#                                   [--jobs N] [--epochs N] [--skip-variants] [--dry-run]
#
# --budget: seconds for the whole script, install to report (default 540: a device call's 10 minutes less a
# margin; --dry-run: none); the rows' deadline is cut to fit it.  --deadline: seconds the rows get from the moment the first
# starts (default 300; no row starts in its last 30 s, so every row that starts gets past its set-up and is
# recorded); --grace: seconds a stopped row may take to reach its epoch boundary (default 60); --ranks: ranks
# at once over all rows (default: this machine's cores, so that no row's timing is a share of an
# oversubscribed CPU; a row larger than it runs alone; in --dry-run no limit); --jobs: rows at once (default:
# no limit but --ranks; --dry-run: 2); --epochs: override the presets' 100 (E epochs in E chapters);
# --skip-variants: no variant pass.  --dry-run: the same control flow on the CPU, each row 4 epochs (in 4
# chapters) of a small net (hidden 32 x 4), every row and variant on the synthetic data set (2,000 rows: the
# control flow, not the learning, in a few minutes): what tests/jobs/test_paper_gpu.py runs.  CIFAR-10 rows
# read the official data from PFFBENCH_DATA, else its JPEG copy there (cifar10-jpeg/, an image folder).
# Environment: PYTHON (default python3), PFFBENCH_DATA (the data sets), MPIEXEC_FLAGS (e.g. --oversubscribe
# for Open MPI), TMPDIR.  Exit status: 0 when every step ran (rows stopped by the deadline included: the
# table says so), 1 when a row or variant failed, 2 on bad arguments.
set -uo pipefail
usage() {
  echo "usage: bash tools/paper_gpu.sh OUT_DIR [--wheels DIR] [--budget S] [--deadline S] [--grace S] [--ranks N]" \
       "[--jobs N] [--epochs N] [--skip-variants] [--dry-run]" >&2
  exit 2
}
[ $# -ge 1 ] || usage
OUT="$1"; shift
WHEELS="" BUDGET="" DEADLINE=300 GRACE=60 MAX_RANKS="" JOBS="" EPOCHS="" DRY=0 VARIANT_PASS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="${2:?}"; shift 2 ;;
    --budget) BUDGET="${2:?}"; shift 2 ;;
    --deadline) DEADLINE="${2:?}"; shift 2 ;;
    --ranks) MAX_RANKS="${2:?}"; shift 2 ;;
    --grace) GRACE="${2:?}"; shift 2 ;;
    --skip-variants) VARIANT_PASS=0; shift ;;
    --jobs) JOBS="${2:?}"; shift 2 ;;
    --epochs) EPOCHS="${2:?}"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    *) echo "paper_gpu: unknown argument $1" >&2; usage ;;
  esac
done
for n in ${BUDGET:+"$BUDGET"} "$DEADLINE" "$GRACE" ${MAX_RANKS:+"$MAX_RANKS"} ${JOBS:+"$JOBS"} ${EPOCHS:+"$EPOCHS"}; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] \
    || { echo "paper_gpu: --budget, --deadline, --grace, --ranks, --jobs and --epochs take positive integers," \
              "got $n" >&2; exit 2; }
done
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT" || { echo "paper_gpu: cannot make $OUT" >&2; exit 2; }
OUT="$(cd "$OUT" && pwd)"
START=$SECONDS
cd "$ROOT"

# 1. what the machine lacks
if ! "$PYTHON" -c "from mpi4py import MPI; import h5py, tqdm" 2>/dev/null; then  # MPI: libmpi loads, not only mpi4py
  if [ -n "$WHEELS" ]; then
    install=("$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" mpi4py mpich h5py tqdm)
    "${install[@]}" 2>/dev/null || "${install[@]}" --user \
      || { echo "paper_gpu: could not install mpi4py, mpich, h5py, tqdm from $WHEELS (wheels for this Python?)" >&2
           exit 1; }
  fi
  "$PYTHON" -c "from mpi4py import MPI; import h5py, tqdm" \
    || { echo "paper_gpu: mpi4py (with an MPI library), h5py or tqdm missing: give --wheels DIR" >&2; exit 1; }
fi
"$PYTHON" -c "import pffbench" 2>/dev/null || export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# mpiexec: beside this Python, on the PATH, or in the user's scripts folder (a --user install)
MPIEXEC="$(dirname "$(command -v "$PYTHON")")/mpiexec"
[ -x "$MPIEXEC" ] || MPIEXEC="$(command -v mpiexec)" || MPIEXEC="$("$PYTHON" -m site --user-base)/bin/mpiexec"
[ -x "$MPIEXEC" ] || { echo "paper_gpu: no mpiexec (beside $PYTHON, on the PATH or in the user's bin)" >&2; exit 1; }
read -ra FLAGS <<< "${MPIEXEC_FLAGS:-}"
timeout 120 "$MPIEXEC" "${FLAGS[@]}" -n 2 "$PYTHON" -c "from mpi4py import MPI; assert MPI.COMM_WORLD.Get_size() == 2" \
  || { echo "paper_gpu: $MPIEXEC could not start 2 ranks of $PYTHON" >&2; exit 1; }
if [ "$DRY" = 1 ]; then
  # 4 epochs in 4 chapters: All-Layers needs a chapter per rank
  DEVICE=cpu; SMALL=(--layers 32,32,32,32 --epochs 4 --threads 1); DATA=(--dataset synthetic)
  JOBS="${JOBS:-2}"; MAX_RANKS="${MAX_RANKS:-100000}"; BUDGET="${BUDGET:-100000}"; GPUS=2; VARIANT_JOBS=1
  VARIANT_TIMEOUT=300
else
  DEVICE=cuda; SMALL=(--threads 1 ${EPOCHS:+--epochs "$EPOCHS"}); DATA=()
  JOBS="${JOBS:-100000}"; MAX_RANKS="${MAX_RANKS:-$(nproc)}"; BUDGET="${BUDGET:-540}"; VARIANT_JOBS=11
  VARIANT_TIMEOUT=150
  GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null) || GPUS=0
  [ "$GPUS" -gt 0 ] || { echo "paper_gpu: torch sees no CUDA device here (--dry-run runs on the CPU)" >&2; exit 1; }
fi
left() { echo $((BUDGET - (SECONDS - START))); }  # seconds of the budget left
failed=0

# 2. each variant once on the device
if [ "$VARIANT_PASS" = 1 ]; then
  echo "paper_gpu: each variant once on $DEVICE, $VARIANT_JOBS at a time ($((SECONDS - START)) s)"
  declare -A VARIANT_PIDS=()
  for spec in "1 pipeline" "2 pipeline" "2 single-layer" "2 all-layers" "2 federated" "2 perf-opt" "1 backprop" \
              "2 dp-backprop" "2 ddp" "2 gpipe" "2 1f1b"; do
    read -r ranks variant <<< "$spec"
    case "$variant" in ddp|gpipe|1f1b) [ "$ranks" -gt "$GPUS" ] && ranks=$GPUS ;; esac  # NCCL: a GPU per rank
    while [ "$(jobs -rp | wc -l)" -ge "$VARIANT_JOBS" ]; do sleep 1; done
    timeout "$VARIANT_TIMEOUT" "$MPIEXEC" "${FLAGS[@]}" -n "$ranks" "$PYTHON" -m pffbench.run --variant "$variant" \
      --layers 64,64 --epochs 2 --threads 1 "${DATA[@]}" --device "$DEVICE" --out "$OUT/gpu-variants.h5" \
      --name "$variant-p$ranks" --quiet > "$OUT/variant-$variant-p$ranks.log" 2>&1 &
    VARIANT_PIDS["$variant-p$ranks"]=$!
  done
  for name in "${!VARIANT_PIDS[@]}"; do
    wait "${VARIANT_PIDS[$name]}" || { echo "paper_gpu: $name failed (see $OUT/variant-$name.log)" >&2; failed=1; }
  done
fi

# 3. every row, --jobs at a time, until the deadline
data="${PFFBENCH_DATA:-$ROOT/data}"
# how a CIFAR-10 row finds its data here: the official files, else the JPEG copy ("CIFAR-10 (JPEG copy)"), else none
found=$("$PYTHON" -m pffbench.data flags cifar10 --data-dir "$data")
case $? in
  0|2) ;;  # 2: its one line said why (found is empty: the CIFAR-10 rows are left out, each said below)
  *) echo "paper_gpu: $PYTHON cannot run pffbench (see above)" >&2; exit 1 ;;
esac
CIFAR=()
[ -z "$found" ] || mapfile -t CIFAR <<< "$found"
ROWS=()
while read -r name ranks; do
  if [[ "$name" == cifar10-* ]] && [ "$DRY" = 0 ] && [ "${#CIFAR[@]}" = 0 ]; then
    echo "paper_gpu: $name skipped: no CIFAR-10 in $data" \
         "(cifar-10-python.tar.gz, cifar-10-batches-py/ or cifar10-jpeg/)"
    continue
  fi
  ROWS+=("$name $ranks")
done < <("$PYTHON" -m pffbench.run --list-presets | awk 'NR > 1 && $2 ~ /^[0-9]+$/ {print $1, $2}')
[ "${#ROWS[@]}" -gt 0 ] || { echo "paper_gpu: no presets listed" >&2; exit 1; }
# the rows' deadline, cut to what the budget leaves after the grace and the report (~30 s)
[ "$DEADLINE" -gt $(($(left) - GRACE - 30)) ] && DEADLINE=$(($(left) - GRACE - 30))
SETUP=30  # no row starts in the deadline's last SETUP seconds: one stopped while it still loads could not record itself
[ "$DEADLINE" -gt "$SETUP" ] || { echo "paper_gpu: no time left for the rows (--budget $BUDGET)" >&2; exit 1; }
echo "paper_gpu: ${#ROWS[@]} rows on $DEVICE, up to $MAX_RANKS ranks at once, for $DEADLINE s ($((SECONDS - START)) s)"
row() {  # row NAME RANKS: one preset on the device, its log beside the results
  local extra=("${DATA[@]}")
  [[ "$1" == cifar10-* ]] && [ "$DRY" = 0 ] && extra=("${CIFAR[@]}")
  "$MPIEXEC" "${FLAGS[@]}" -n "$2" "$PYTHON" -m pffbench.run --preset "$1" "${SMALL[@]}" "${extra[@]}" --device "$DEVICE" \
    --out "$OUT/paper-gpu.h5" --name "$1" --checkpoint-dir "${TMPDIR:-/tmp}/paper-gpu-checkpoints/$1" --quiet \
    > "$OUT/row-$1.log" 2>&1
}
ranks_of_rows() {  # this script's row ranks: processes `PYTHON -m pffbench.run ... --out OUT/paper-gpu.h5` (not
  local file argv     # mpiexec, whose arguments say the same; read from /proc: a slim image may lack procps)
  for file in /proc/[0-9]*/cmdline; do
    mapfile -d '' -t argv < "$file" 2>/dev/null || continue
    [ "${argv[1]:-}" = -m ] && [ "${argv[2]:-}" = pffbench.run ] && [[ " ${argv[*]} " == *" $OUT/paper-gpu.h5 "* ]] \
      && { file="${file%/cmdline}"; echo "${file#/proc/}"; }
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
declare -A PIDS=() RANKS_OF=()
ROWS_START=$SECONDS
late() { [ $((SECONDS - ROWS_START)) -ge "$DEADLINE" ]; }
too_late_to_start() { [ $((SECONDS - ROWS_START)) -ge $((DEADLINE - SETUP)) ] && [ "${#PIDS[@]}" -gt 0 ]; }
running_ranks() {  # the ranks of the rows still running
  local running name n=0
  running=" $(jobs -rp | tr '\n' ' ') "
  for name in "${!PIDS[@]}"; do [[ "$running" == *" ${PIDS[$name]} "* ]] && n=$((n + RANKS_OF[$name])); done
  echo "$n"
}
full() {  # full RANKS: no room for a row of RANKS ranks now (a row larger than --ranks runs alone)
  local busy
  busy=$(running_ranks)
  [ "$(jobs -rp | wc -l)" -ge "$JOBS" ] || { [ "$busy" -gt 0 ] && [ $((busy + $1)) -gt "$MAX_RANKS" ]; }
}
for line in "${ROWS[@]}"; do
  read -r name ranks <<< "$line"
  while full "$ranks" && ! too_late_to_start; do sleep 1; done  # polled, not wait -n
  too_late_to_start && break
  row "$name" "$ranks" & PIDS[$name]=$!; RANKS_OF[$name]=$ranks
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
    137) echo "paper_gpu: row $name did not stop within --grace $GRACE s and was killed" >&2; failed=1 ;;
    *) echo "paper_gpu: row $name failed (exit $code; see $OUT/row-$name.log)" >&2; failed=1 ;;
  esac
done
not_started=$(( ${#ROWS[@]} - ${#PIDS[@]} ))
[ "$not_started" -gt 0 ] && echo "paper_gpu: $not_started row(s) not started before the deadline"

# 4. what was measured
echo "paper_gpu: done in $((SECONDS - START)) s; the rows (status complete or stopped, with their epochs):"
"$PYTHON" -m pffbench.report "$OUT/paper-gpu.h5" --format markdown || failed=1
exit $failed
