# Sourced by the blueberry sbatch scripts: set-up, and preemption that checkpoints and requeues.
#
# BLUEBERRY_HOME  the blueberry checkout (holds slurm/ and launch/); default: the submit dir
# VENV            a virtualenv to activate; default: $BLUEBERRY_HOME/.venv when it exists
# Jobs run in the submit dir: run dirs go to ./runs, logs to ./logs.

bb_setup() {
  BLUEBERRY_HOME=${BLUEBERRY_HOME:-$SLURM_SUBMIT_DIR}
  export BLUEBERRY_HOME
  VENV=${VENV:-$BLUEBERRY_HOME/.venv}
  if [ -f "$VENV/bin/activate" ]; then
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
  fi
  mkdir -p logs
  # The job to requeue: this array task, or this job.
  if [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then
    BB_JOB_REF="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
  else
    BB_JOB_REF="$SLURM_JOB_ID"
  fi
  echo "blueberry: job $BB_JOB_REF on $(hostname) (restart ${SLURM_RESTART_COUNT:-0}) in $PWD"
}

# bb_run_preemptible CMD...: run CMD in its own process group. On USR1 (sent by
# `#SBATCH --signal=B:USR1@90` before the time limit, or `scancel --signal=USR1 --batch`) or
# TERM (preemption), send TERM to the whole group: the trainer checkpoints at the end of its
# step and exits. Wait until every process of the group is gone (a launcher may exit first),
# then requeue this job; on restart `--resume=auto` continues the same run dir and W&B run.
bb_run_preemptible() {
  BB_PREEMPTED=0
  setsid "$@" &
  BB_PGID=$!
  trap 'BB_PREEMPTED=1; echo "blueberry: signal received, checkpointing"; kill -TERM -- -"$BB_PGID" 2>/dev/null' USR1 TERM
  local code=0
  while :; do
    wait "$BB_PGID" && code=0 || code=$?
    # `wait` also returns when a trapped signal arrives: go on waiting while the leader lives.
    kill -0 "$BB_PGID" 2>/dev/null || break
  done
  while pgrep -g "$BB_PGID" >/dev/null 2>&1; do sleep 1; done
  trap - USR1 TERM
  if [ "$BB_PREEMPTED" = 1 ]; then
    echo "blueberry: requeueing $BB_JOB_REF (the run resumes from its checkpoint)"
    scontrol requeue "$BB_JOB_REF" || echo "blueberry: scontrol requeue failed (code $?)"
    exit 0
  fi
  return "$code"
}

# How many processes per node: GPUS (or the GPUs SLURM gave this node), else 1 on a CPU node.
bb_nproc() {
  if [ -n "${GPUS:-}" ]; then echo "$GPUS"
  elif [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then echo "$SLURM_GPUS_ON_NODE"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then nvidia-smi -L | wc -l
  else echo "${CPU_PROCS:-1}"
  fi
}
