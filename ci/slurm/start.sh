#!/usr/bin/env bash
# Start a single-node SLURM on this machine, for the tests and CI (docs/slurm.md).
#
#   bash ci/slurm/start.sh      # install (first time), configure, start, wait for an idle node
#   bash ci/slurm/stop.sh       # stop exactly the daemons this script started
#
# Installs Debian's munge and SLURM (slurm-wlm 22.05) when missing, writes /etc/slurm/slurm.conf
# and gres.conf from the templates next to this script (one node named after `hostname -s`, one
# partition `debug`, two fake GPUs `gpu:a100:2`), starts munged, slurmctld and slurmd directly (no
# systemd) and records their PIDs in $EDM2_SLURM_STATE (default /run/edm2-ci-slurm) for stop.sh.
# Idempotent: a second run finds the daemons it started alive and only waits for the node; if the
# templates changed since they were started, it stops them (stop.sh) and starts them anew.
# Needs root. Never touches a slurm.conf that it did not write itself.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=ci/slurm/common.sh
. "$HERE/common.sh"
HOST="$(hostname -s)"
WAIT_S="${EDM2_SLURM_WAIT_S:-45}"

say() { echo "ci/slurm/start.sh: $*"; }
die() { echo "ci/slurm/start.sh: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"

# --- helpers -------------------------------------------------------------------------------------

# Prints the PID recorded for daemon $1 if that process is alive and still is that daemon.
alive_pid() {
    local name="$1" pid
    [ -s "$STATE/$name.pid" ] || return 1
    pid="$(cat "$STATE/$name.pid")"
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$name" || return 1
    echo "$pid"
}

# Waits for pid file $2 of daemon $1 (they daemonise and write it), then records the PID.
record_pid() {
    local name="$1" pidfile="$2" pid=""
    for _ in $(seq 1 100); do
        if [ -s "$pidfile" ]; then
            pid="$(cat "$pidfile")"
            [ -d "/proc/$pid" ] && break
        fi
        sleep 0.1
    done
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || die "$name did not start; see its log (/var/log/slurm, /var/log/munge)"
    echo "$pid" >"$STATE/$name.pid"
    say "started $name (pid $pid)"
}

node_state() { sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -n1; }

wait_for_idle_node() {
    local state="" resumed=0
    for _ in $(seq 1 $((WAIT_S * 2))); do
        state="$(node_state || true)"
        case "$state" in
            idle | mixed | allocated | completing)
                # The node's slurmd has registered with this controller (not a state from its config).
                if ! scontrol -o show node "$HOST" 2>/dev/null | grep -q 'SlurmdStartTime=None'; then
                    say "node $HOST is $state; partition debug is up"
                    return 0
                fi
                ;;
            drain* | down* | fail*)
                if [ "$resumed" = 0 ]; then
                    say "node $HOST is $state; resuming it"
                    scontrol update NodeName="$HOST" State=RESUME || true
                    resumed=1
                fi
                ;;
        esac
        sleep 0.5
    done
    sinfo -N -l >&2 || true
    tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
    die "node $HOST not ready after ${WAIT_S}s (state: '${state:-no answer}')"
}

# --- already running? ----------------------------------------------------------------------------

templates_digest() { cat "$HERE/slurm.conf.in" "$HERE/gres.conf.in" | sha256sum | cut -d' ' -f1; }

if ctld="$(alive_pid slurmctld)" && slurmd_pid="$(alive_pid slurmd)"; then
    if [ "$(cat "$STATE/templates.sha256" 2>/dev/null)" = "$(templates_digest)" ]; then
        say "already running (slurmctld pid $ctld, slurmd pid $slurmd_pid)"
        wait_for_idle_node
        exit 0
    fi
    say "running with an older configuration (the templates changed); restarting"
    bash "$HERE/stop.sh"
fi
# Someone else's configuration: use their SLURM if it answers, never replace their files.
if [ -e "$CONF_DIR/slurm.conf" ] && ! grep -q "$MARKER" "$CONF_DIR/slurm.conf"; then
    if command -v sinfo >/dev/null && sinfo -h -o '%P' >/dev/null 2>&1; then
        say "a SLURM that this script did not configure already answers; using it as it is"
        sinfo
        exit 0
    fi
    die "$CONF_DIR/slurm.conf exists and was not written by this script; refusing to replace it"
fi

# --- install -------------------------------------------------------------------------------------

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null ||
    ! command -v munged >/dev/null; then
    say "installing munge and SLURM (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # apt may refuse to start the services (policy-rc.d, no systemd): that is expected, we start them below.
    apt-get install -y -qq --no-install-recommends munge slurmctld slurmd slurm-client >/dev/null
fi
say "slurm $(dpkg-query -W -f='${Version}' slurmctld), $(munged --version 2>&1 | awk '{print $1; exit}')"

# --- configure -----------------------------------------------------------------------------------

mkdir -p "$CONF_DIR"
for f in slurm.conf gres.conf; do
    if [ -e "$CONF_DIR/$f" ] && ! grep -q "$MARKER" "$CONF_DIR/$f"; then
        die "$CONF_DIR/$f exists and was not written by this script; refusing to replace it"
    fi
done
read -r cpus mem < <(slurmd -C | awk '
    { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
    END { print v["CPUs"], int(v["RealMemory"] * 0.9) }')
[ -n "$cpus" ] && [ -n "$mem" ] || die "could not read CPUs and RealMemory from 'slurmd -C'"
for f in slurm.conf gres.conf; do
    sed -e "s/@HOST@/$HOST/g" -e "s/@CPUS@/$cpus/g" -e "s/@MEM@/$mem/g" -e "1s|^|# $MARKER\n|" \
        "$HERE/$f.in" >"$CONF_DIR/$f.tmp"
    mv "$CONF_DIR/$f.tmp" "$CONF_DIR/$f"
done
say "wrote $CONF_DIR/slurm.conf and gres.conf (node $HOST, CPUs=$cpus, RealMemory=$mem MB, gpu:a100:2)"

install -d -o slurm -g slurm /var/lib/slurm /var/lib/slurm/slurmctld /var/log/slurm
install -d /var/lib/slurm/slurmd
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge /etc/munge
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
mkdir -p "$STATE"

# --- start ---------------------------------------------------------------------------------------

# munge first: slurmctld and slurmd authenticate through it.
if alive_pid munged >/dev/null; then
    say "munged already running (pid $(alive_pid munged))"
elif munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "a munged that this script did not start already answers; using it"
else
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged --force
    record_pid munged /run/munge/munged.pid
fi

for daemon in slurmctld slurmd; do
    if pid="$(alive_pid "$daemon")"; then
        say "$daemon already running (pid $pid)"
        continue
    fi
    # A pid file left by an earlier run (the daemon is gone) makes the new daemon's start ambiguous.
    rm -f "/run/$daemon.pid"
    if [ "$daemon" = slurmctld ]; then
        # -c: start with a clean state, so that no job of an earlier (killed) run comes back.
        /usr/sbin/slurmctld -c
    else
        /usr/sbin/slurmd
    fi
    record_pid "$daemon" "/run/$daemon.pid"
done

templates_digest >"$STATE/templates.sha256"
wait_for_idle_node
