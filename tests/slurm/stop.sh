#!/usr/bin/env bash
# Stop the daemons tests/slurm/start.sh started, by PID, and remove the /etc symlink.
BASE=${BASE:-/tmp/tag2mask-slurm}
for f in "$BASE/run/slurmd.pid" "$BASE/run/slurmctld.pid" "$BASE/munge/munged.pid"; do
  [ -s "$f" ] || continue
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || continue
  for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
done
if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$BASE/etc/slurm.conf" ]; then
  rm -f /etc/slurm/slurm.conf
fi
