#!/usr/bin/env bash
# Start a small, real SLURM on this machine for framebag's `slurm` tests: munge, one slurmctld and
# FRAMEBAG_SLURM_NODES slurmd "nodes" (default 2), all on loopback, no systemd and no cgroups.
#
#   sudo bash tests/harness/start-slurm.sh      # then: python -m pytest -m slurm
#   sudo bash tests/harness/stop-slurm.sh       # ends only what this script started
#
# Installs Debian's slurmctld, slurmd, slurm-client and munge when they are missing (about 30 s).
# Rerunning it is safe and quick (well under a second) when SLURM is already up.
# It writes /etc/slurm/slurm.conf and a munge key if none exists: use it on a throw-away machine
# or container, never on a host that is part of a real cluster.
set -euo pipefail

NODES=${FRAMEBAG_SLURM_NODES:-2}
RUN=/run/framebag-slurm               # pid files of the daemons we start; stop-slurm.sh reads them
CONF=/etc/slurm/slurm.conf
HOST=$(hostname -s)
HERE=$(dirname "$(readlink -f "$0")")

[ "$(id -u)" = 0 ] || { echo "start-slurm.sh: must run as root (it starts system daemons)" >&2; exit 1; }
mkdir -p "$RUN"

need_install=0
for tool in slurmctld slurmd sinfo munged; do command -v "$tool" >/dev/null || need_install=1; done
if [ "$need_install" = 1 ]; then
  echo "installing slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
    || { apt-get update -q >/dev/null && \
         apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; }
fi

# running <pidfile> <command name>: the recorded process is alive and is what we think it is
running() {
  local pid; [ -s "$1" ] || return 1; pid=$(cat "$1")
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null
}

# The configuration is written from scratch each time and compared with the one in place; only a
# real change restarts our daemons, so reruns are cheap. Memory is fixed from MemTotal so that the
# text stays the same between runs.
getent hosts "$HOST" >/dev/null || echo "127.0.0.1 $HOST" >> /etc/hosts
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) / 2 / NODES ))
NAMES=()
for i in $(seq 1 "$NODES"); do NAMES+=("fb$i"); done
mkdir -p /etc/slurm /var/spool/slurmctld /var/log/slurm
want=$(mktemp)
cat > "$want" <<CONFIG
# written by framebag tests/harness/start-slurm.sh; loopback only, for tests
ClusterName=framebag
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName=fb[1-$NODES] NodeHostname=$HOST NodeAddr=127.0.0.1 Port=[17001-$((17000 + NODES))] CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONFIG
if ! cmp -s "$want" "$CONF"; then
  if running "$RUN/slurmctld.pid" slurmctld || compgen -G "$RUN/slurmd-*.pid" >/dev/null; then
    echo "slurm.conf changed: restarting the daemons we started"
    bash "$HERE/stop-slurm.sh"
  fi
  install -m 644 "$want" "$CONF"
fi
rm -f "$want"

# munge authenticates every SLURM message; one key per machine is enough here
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  head -c 1024 /dev/urandom > /etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge && chmod 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  cp /run/munge/munged.pid "$RUN/munged.pid"
  echo "munged started"
fi

if ! running "$RUN/slurmctld.pid" slurmctld; then
  rm -f "$RUN/slurmctld.pid"
  slurmctld -c        # -c: forget saved jobs and node states from an earlier, unclean stop
  for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.1; done
  echo "slurmctld started"
fi

for n in "${NAMES[@]}"; do
  if ! running "$RUN/slurmd-$n.pid" slurmd; then
    rm -f "$RUN/slurmd-$n.pid"
    mkdir -p "/var/spool/slurmd/$n"
    slurmd -N "$n"
    for _ in $(seq 50); do [ -s "$RUN/slurmd-$n.pid" ] && break; sleep 0.1; done
    echo "slurmd $n started"
  fi
done

# usable = idle, or already running jobs; a node left DOWN by an unclean stop is resumed once
ready=0
for i in $(seq 120); do
  ready=$( (sinfo -h -N -t idle,mix,alloc,comp -o %N 2>/dev/null || true) | sort -u | wc -l)
  [ "$ready" -ge "$NODES" ] && break
  [ "$i" = 20 ] && scontrol update NodeName="fb[1-$NODES]" State=RESUME 2>/dev/null || true
  sleep 0.5
done
if [ "$ready" -lt "$NODES" ]; then
  sinfo -N >&2 || true
  echo "start-slurm.sh: only $ready of $NODES SLURM nodes are up; see /var/log/slurm/" >&2
  tail -n 20 /var/log/slurm/slurmctld.log >&2 || true
  exit 1
fi
echo "SLURM ready: $NODES node(s), partition debug"
