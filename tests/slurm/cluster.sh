#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine for the SLURM tests: munge + slurmctld + slurmd.
#   bash tests/slurm/cluster.sh up     install (apt) if needed, write slurm.conf, start the daemons
#   bash tests/slurm/cluster.sh down   stop the daemons it started
# State lives in $BLUEBERRY_SLURM_DIR (default /tmp/blueberry-slurm); tests use $DIR/slurm.conf.
# When the cluster cannot come up, `up` writes the reason to $DIR/unavailable and exits 0, and the
# SLURM tests skip with that reason (CI checks the file is absent).
set -uo pipefail
DIR=${BLUEBERRY_SLURM_DIR:-/tmp/blueberry-slurm}
export SLURM_CONF=$DIR/slurm.conf

unavailable() { mkdir -p "$DIR"; echo "$*" > "$DIR/unavailable"; echo "slurm cluster unavailable: $*" >&2; exit 0; }

up() {
  mkdir -p "$DIR"; rm -f "$DIR/unavailable"
  [ "$(id -u)" = 0 ] || unavailable "needs root to start munge/slurmd (uid $(id -u))"
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || unavailable "slurm-wlm/munge not installed and no apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >"$DIR/apt.log" 2>&1 \
      || { apt-get update -q >>"$DIR/apt.log" 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >>"$DIR/apt.log" 2>&1; } \
      || unavailable "apt-get install slurm-wlm munge failed (see $DIR/apt.log)"
  fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge /etc/munge
  [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
  chown -R munge:munge /run/munge /var/lib/munge /var/log/munge /etc/munge
  chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged || unavailable "munged did not start"
    sleep 1
  fi
  munge -n | unmunge >/dev/null 2>&1 || unavailable "munge credentials do not verify"

  local host cpus mem
  host=$(hostname); cpus=$(nproc); mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
  mkdir -p "$DIR/spool" "$DIR/state"
  cat > "$SLURM_CONF" <<CONF
ClusterName=blueberry-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmdSpoolDir=$DIR/spool
StateSaveLocation=$DIR/state
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=600
KillWait=30
NodeName=$host CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  down_daemons
  slurmctld -c || unavailable "slurmctld did not start (see $DIR/slurmctld.log)"
  slurmd || unavailable "slurmd did not start (see $DIR/slurmd.log)"
  for _ in $(seq 1 30); do
    state=$(sinfo -h -o %T 2>/dev/null | head -1)
    case "$state" in idle*|mixed*|allocated*) echo "slurm cluster up: $SLURM_CONF ($cpus CPUs, node $host)"; return 0;; esac
    sleep 1
  done
  unavailable "node did not become idle (state: ${state:-none}; see $DIR/slurmd.log)"
}

down_daemons() {
  for daemon in slurmd slurmctld; do
    local pid
    pid=$(cat "$DIR/$daemon.pid" 2>/dev/null) || continue   # (the daemon removes it as it exits)
    kill "$pid" 2>/dev/null
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    rm -f "$DIR/$daemon.pid"
  done
}

down() {
  down_daemons
  [ -f /run/munge/munged.pid ] && kill "$(cat /run/munge/munged.pid)" 2>/dev/null
  echo "slurm cluster down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
