#!/usr/bin/env bash
# Ends the daemons that tests/slurm/start.sh started, and only those: each pid file's process, if it is
# still the program start.sh started, gets SIGTERM (then SIGKILL after 20 s), in the reverse order of start.
# /etc/slurm/slurm.conf, start.sh's link, is removed. The state folder ($ALPHASTOMICS_SLURM_DIR, default
# /tmp/alphastomics-slurm) is kept for the next start; `--purge` also deletes it (accounting database, job
# records, logs). `stop.sh NAME...` stops only those daemons (start.sh restarts two after a new config).
set -uo pipefail
DIR=${ALPHASTOMICS_SLURM_DIR:-/tmp/alphastomics-slurm}

stop() {
  local name=$1 pid
  pid=$(cat "$DIR/pid/$name.pid" 2>/dev/null) || return 0
  if [ -n "$pid" ] && [ -d "/proc/$pid" ] && grep -q "$name" "/proc/$pid/cmdline" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
    if [ -d "/proc/$pid" ]; then kill -KILL "$pid" 2>/dev/null; fi
    echo "tests/slurm/stop.sh: stopped $name (pid $pid)" >&2
  fi
  rm -f "$DIR/pid/$name.pid"
}

if [ $# -gt 0 ] && [ "$1" != "--purge" ]; then  # stop.sh NAME...: these daemons only (start.sh uses it)
  for name in "$@"; do stop "$name"; done
  exit 0
fi
for name in slurmd slurmctld slurmdbd mariadbd munged; do stop "$name"; done
# the link start.sh made, if it is still that link
if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$DIR/etc/slurm.conf" ]; then rm -f /etc/slurm/slurm.conf; fi
if [ "${1:-}" = "--purge" ]; then rm -rf "$DIR"; fi
