# Sourced by the jobs/*.sbatch scripts (submit them from the repository root).
# Sets threads per rank, the Python and the MPI launcher, and forwards the
# --signal warning to the run so a time limit stops it cleanly.
#
#   PYTHON    python with pffbench installed (default: .venv/bin/python)
#   LAUNCHER  "srun --mpi=pmi2" (default; MPICH-based MPIs, the pip mpich wheel),
#             "srun --mpi=pmix" (Open MPI), or "mpirun" / "mpiexec" (reads the allocation)
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
# Edit for your site, e.g.:
# module load python/3.11 openmpi/4.1
PYTHON="${PYTHON:-.venv/bin/python}"
LAUNCHER="${LAUNCHER:-srun --mpi=pmi2}"
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"
export SRUN_CPUS_PER_TASK="${SLURM_CPUS_PER_TASK:-1}"   # srun no longer inherits --cpus-per-task (Slurm >= 22.05)
mkdir -p results

# launch N ARGS...: start N ranks of ARGS with $LAUNCHER
launch() {
  local n="$1"; shift
  # shellcheck disable=SC2086
  $LAUNCHER -n "$n" "$@"
}

# supervise CMD...: run CMD in the background and forward the --signal warning
# (SIGTERM or SIGUSR1 to this batch shell, #SBATCH --signal=B:...) to it and its
# children (srun/mpirun pass it on to the ranks), then wait for them to finish.
supervise() {
  "$@" &
  local pid=$!
  trap 'echo "pffbench job: time limit near, forwarding SIGTERM to $pid" >&2; kill -TERM $pid $(pgrep -P $pid) 2>/dev/null || true' TERM USR1
  local rc=0
  wait "$pid" || rc=$?
  if [ "$rc" -ge 128 ] && kill -0 "$pid" 2>/dev/null; then  # wait was interrupted by the trap
    rc=0; wait "$pid" || rc=$?
  fi
  trap - TERM USR1
  return "$rc"
}
