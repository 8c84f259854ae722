#!/usr/bin/env bash
# Stop the single-node SLURM started by ci/slurm/start.sh (docs/slurm.md).
#
# Stops exactly the daemons that start.sh recorded in $EDM2_SLURM_STATE (default
# /run/edm2-ci-slurm), by PID, after checking that each PID still is that daemon; never by name.
# Jobs still in the queue are cancelled first, so that no job step outlives its slurmd.
# Removes the daemons' pid files, the state and the configuration start.sh wrote (with it in place
# and no controller, every SLURM client call waits about 9 s for slurmctld, and the Snakemake SLURM
# plugin runs `scontrol show config` whenever Snakemake starts, even for a local run; without it
# the call fails at once). Idempotent: nothing running is fine.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=ci/slurm/common.sh
. "$HERE/common.sh"

say() { echo "ci/slurm/stop.sh: $*"; }

# The configuration start.sh wrote (never another's), once its daemons are gone.
remove_our_conf() {
    local f
    for f in slurm.conf gres.conf; do
        if [ -e "$CONF_DIR/$f" ] && grep -q "$MARKER" "$CONF_DIR/$f"; then
            rm -f "$CONF_DIR/$f"
        fi
    done
}

if [ ! -d "$STATE" ]; then
    say "nothing to stop (no state in $STATE)"
    pgrep -x slurmctld >/dev/null || remove_our_conf
    exit 0
fi

# The daemon's PID from start.sh's state, if that process is alive and still is that daemon.
alive_pid() {
    local name="$1" pid
    [ -s "$STATE/$name.pid" ] || return 1
    pid="$(cat "$STATE/$name.pid")"
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$name" || return 1
    echo "$pid"
}

# Cancel the jobs of our own cluster while its controller is still there.
if alive_pid slurmctld >/dev/null && alive_pid slurmd >/dev/null; then
    jobs="$(squeue -h -t PENDING,RUNNING,SUSPENDED,CONFIGURING,COMPLETING -o '%i' 2>/dev/null || true)"
    if [ -n "$jobs" ]; then
        say "cancelling jobs still queued or running: $(echo $jobs)"
        # shellcheck disable=SC2086
        scancel $jobs || true
        for _ in $(seq 1 30); do
            [ -z "$(squeue -h -t PENDING,RUNNING,SUSPENDED,CONFIGURING,COMPLETING -o '%i' 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
fi

# Reverse order of start: slurmd, slurmctld, then munge.
for name in slurmd slurmctld munged; do
    case "$name" in
        munged) pidfile=/run/munge/munged.pid ;;
        *) pidfile="/run/$name.pid" ;;
    esac
    if pid="$(alive_pid "$name")"; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            [ -d "/proc/$pid" ] || break
            sleep 0.1
        done
        if [ -d "/proc/$pid" ]; then
            say "$name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
        fi
        say "stopped $name (pid $pid)"
    elif [ -s "$STATE/$name.pid" ]; then
        say "$name (pid $(cat "$STATE/$name.pid")) was not running any more"
    fi
    # A stale pid file (its process gone) would confuse the next start.
    if [ -s "$pidfile" ] && [ ! -d "/proc/$(cat "$pidfile")" ]; then
        rm -f "$pidfile"
    fi
    rm -f "$STATE/$name.pid"
done
rm -f "$STATE/templates.sha256"
rmdir "$STATE" 2>/dev/null || true
remove_our_conf
