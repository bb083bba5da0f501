#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by slurm/start-cluster.sh.
#   slurm/stop-cluster.sh [--wipe]
# Lets active jobs finish (up to PERILN_SLURM_DRAIN_TIMEOUT s, default 60),
# then cancels what is left: daemons stopped under running jobs can bring the
# node back drained. Stops slurmd, slurmctld and munged by their pid files in
# the state dir, so other SLURM or munge daemons on the machine are untouched.
# --wipe also deletes the state dir (job records, logs, munge key, shim).
set -euo pipefail

# shellcheck source=env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE_DIR="$PERILN_SLURM_DIR"
RUN_DIR="$STATE_DIR/run"
DRAIN_TIMEOUT_S="${PERILN_SLURM_DRAIN_TIMEOUT:-60}"
HOST="$(hostname -s)"

log() { echo "stop-cluster: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }


# Active jobs: squeue's default states (pending, running, completing, ...).
active_jobs() { squeue --noheader --format=%F 2>/dev/null | sort -u; }

# Waits up to $1 seconds for the queue to empty; fails if it does not.
wait_queue_empty() {
    local deadline=$((SECONDS + $1))
    while [[ -n "$(active_jobs)" ]]; do
        ((SECONDS < deadline)) || return 1
        sleep 1
    done
}

stop_daemon() {
    local name="$1" pid deadline
    pid="$(daemon_pid "$RUN_DIR/$name.pid" "$name")" || return 0
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || return 0  # it exited meanwhile
    deadline=$((SECONDS + 30))
    while is_running "$pid" "$name"; do
        if ((SECONDS >= deadline)); then
            log "$name did not exit in 30s: killing it"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    rm -f "$RUN_DIR/$name.pid"
}

main() {
    local wipe=0
    case "${1:-}" in
        "") ;;
        --wipe) wipe=1 ;;
        *) die "usage: $0 [--wipe]" ;;
    esac

    if daemon_pid "$RUN_DIR/slurmctld.pid" slurmctld >/dev/null; then
        if ! wait_queue_empty "$DRAIN_TIMEOUT_S"; then
            log "jobs still active after ${DRAIN_TIMEOUT_S}s, cancelling: $(active_jobs | tr '\n' ' ')"
            active_jobs | xargs -r scancel
            # KillWait=5, then the node cleans up; allow a margin.
            wait_queue_empty 30 || log "WARNING: jobs still listed after scancel: $(active_jobs | tr '\n' ' ')"
        fi
        # Drain state is saved with the node and would survive the restart.
        if [[ "$(sinfo --noheader --Node --nodes="$HOST" --format=%T 2>/dev/null)" == drain* ]]; then
            log "node $HOST is drained: resuming it"
            scontrol update NodeName="$HOST" State=RESUME || true
        fi
    fi

    # slurmd first (it still talks to slurmctld while exiting), then slurmctld
    # (it saves its state on exit), munged last (both authenticate through it).
    stop_daemon slurmd
    stop_daemon slurmctld
    stop_daemon munged

    if ((wipe)); then
        [[ "$STATE_DIR" == /*/* ]] || die "refusing to wipe suspicious state dir '$STATE_DIR'"
        log "wiping $STATE_DIR"
        rm -rf -- "$STATE_DIR"
    fi
    log "cluster stopped"
}

main "$@"
