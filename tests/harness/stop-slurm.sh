#!/usr/bin/env bash
# Stop the SLURM that tests/harness/start-slurm.sh started: cancel its jobs, then end only the
# daemons whose pid files it recorded in /run/framebag-slurm (a munged it found running is kept).
set -uo pipefail
RUN=/run/framebag-slurm
[ -d "$RUN" ] || { echo "no framebag SLURM to stop"; exit 0; }

if [ -s "$RUN/slurmctld.pid" ]; then
  jobs=$(squeue -h -o %i 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 40); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.25; done
  fi
fi

running() {
  [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null
}
stop() {  # stop <pidfile> <command name>
  local pid; [ -s "$1" ] || return 0; pid=$(cat "$1")
  if running "$pid" "$2"; then
    kill -TERM "$pid"
    for _ in $(seq 100); do running "$pid" "$2" || break; sleep 0.1; done
    running "$pid" "$2" && kill -KILL "$pid"
    echo "stopped $2 ($pid)"
  fi
  rm -f "$1"
}
for f in "$RUN"/slurmd-*.pid; do [ -e "$f" ] && stop "$f" slurmd; done
stop "$RUN/slurmctld.pid" slurmctld
stop "$RUN/munged.pid" munged
exit 0
