# Sourced by the jobs/*.sbatch scripts (submit them from the repository root).
# Sets threads per rank, the Python and the MPI launcher, and hands the
# --signal warning to the run's ranks so a time limit stops it cleanly.
#
#   PYTHON    python with pffbench installed (default: .venv/bin/python)
#   LAUNCHER  "srun --mpi=pmi2" (default; MPICH-based MPIs, the pip mpich wheel),
#             "srun --mpi=pmix" (Open MPI), or "mpirun" / "mpiexec" (reads the allocation)
#   CHECKPOINTS  the job's --checkpoint-dir (default results/checkpoints-<job id>); a job cut by its
#             time limit requeues itself (#SBATCH --requeue) and resumes from there
#   RESUME    1: resume from CHECKPOINTS in a new job too (a requeued job always does)
#   REQUEUE   0: do not requeue after the time-limit warning (default 1); MAX_REQUEUES bounds the
#             restarts (default 20)
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
# Edit for your site, e.g.:
# module load python/3.11 openmpi/4.1
PYTHON="${PYTHON:-.venv/bin/python}"
LAUNCHER="${LAUNCHER:-srun --mpi=pmi2}"
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"
export SRUN_CPUS_PER_TASK="${SLURM_CPUS_PER_TASK:-1}"   # srun no longer inherits --cpus-per-task (Slurm >= 22.05)
mkdir -p results
CHECKPOINTS="${CHECKPOINTS:-results/checkpoints-${SLURM_JOB_ID:-local}}"
# A requeued job (SLURM_RESTART_COUNT > 0) continues from its checkpoints; a new one starts afresh.
RESUMING=0
if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] || [ "${RESUME:-0}" = 1 ]; then RESUMING=1; fi
RESUME_FLAG=()
if [ "$RESUMING" = 1 ]; then RESUME_FLAG=(--resume); fi
TIME_LIMIT_WARNED=0  # set by stop_ranks: the run in progress was stopped for the time limit

# launch N ARGS...: start N ranks of ARGS with $LAUNCHER (exec'd, so that a background
# launch's pid is the launcher's own)
launch() {
  local n="$1"; shift
  # shellcheck disable=SC2086
  exec $LAUNCHER -n "$n" "$@"
}

# job_ranks PID: the pids of this job's pffbench ranks on this node (inside
# Slurm: python processes running pffbench.run with this job's id, wherever the
# launcher put them; outside: python processes below PID)
job_ranks() {
  local pid candidates
  if [ -n "${SLURM_JOB_ID:-}" ]; then
    candidates=$(pgrep -f -- '-m pffbench[.]run' || true)
  else
    candidates=$(descendants "$1")
  fi
  for pid in $candidates; do
    # python only: the launchers' own command lines name pffbench.run too
    [ "$(head -c 6 "/proc/$pid/comm" 2>/dev/null)" = python ] || continue
    if [ -z "${SLURM_JOB_ID:-}" ] || tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qx "SLURM_JOB_ID=$SLURM_JOB_ID"; then
      echo "$pid"
    fi
  done
}

descendants() {
  local child
  for child in $(pgrep -P "$1"); do echo "$child"; descendants "$child"; done
}

# stop_ranks PID: send SIGTERM to the ranks of the run in progress, so that it
# stops at its next epoch boundary, checkpointed and recorded as interrupted.
# Straight to the ranks, not to the launcher: srun turns a SIGTERM into killing
# its step, and Open MPI's mpirun kills its job seconds after one.  One rank
# would do (the ranks agree on stopping); srun's ranks may be on other nodes,
# so there scancel hands it to every step's tasks.
stop_ranks() {
  trap '' TERM USR1  # one warning is enough; the ranks stop on their own from here
  TIME_LIMIT_WARNED=1
  echo "pffbench job: time limit near, stopping the run at its next epoch boundary" >&2
  case "$LAUNCHER" in
    srun*) scancel --signal=TERM "$SLURM_JOB_ID" || true ;;
    *) local pid
       for pid in $(job_ranks "$1"); do kill -TERM "$pid" 2>/dev/null || true; done ;;
  esac
}

# supervise CMD...: run CMD in the background; when the time-limit warning
# reaches this batch shell (#SBATCH --signal=B:TERM@...), stop the ranks of the
# run in progress; return CMD's exit code once it has finished.
supervise() {
  "$@" &
  local pid=$! rc
  trap "stop_ranks $pid" TERM USR1
  while :; do
    rc=0; wait "$pid" || rc=$?
    kill -0 "$pid" 2>/dev/null || break  # finished, rather than a wait cut short by the trap
  done
  trap - TERM USR1
  return "$rc"
}

# requeue: once the time-limit warning has stopped the run at a checkpoint, put this job back in
# the queue (same job id, so the same CHECKPOINTS); its next start resumes there.  Returns non-zero,
# with the line saying how to go on by hand, where it cannot (not under Slurm, REQUEUE=0, too many
# restarts, a site that forbids requeueing).
requeue() {
  local count="${SLURM_RESTART_COUNT:-0}" by_hand="resubmit with CHECKPOINTS=$CHECKPOINTS RESUME=1 to resume"
  if [ -z "${SLURM_JOB_ID:-}" ] || [ "${REQUEUE:-1}" = 0 ]; then
    echo "pffbench job: not requeued (REQUEUE=0 or not a Slurm job); $by_hand" >&2; return 1
  fi
  if [ "$count" -ge "${MAX_REQUEUES:-20}" ]; then
    echo "pffbench job: not requeued: restarted $count times already (MAX_REQUEUES=${MAX_REQUEUES:-20}); $by_hand" >&2
    return 1
  fi
  if ! scontrol requeue "$SLURM_JOB_ID"; then
    echo "pffbench job: scontrol requeue $SLURM_JOB_ID failed (the site may forbid requeueing); $by_hand" >&2
    return 1
  fi
  echo "pffbench job: requeued (restart $((count + 1))); it resumes from $CHECKPOINTS" >&2
}
