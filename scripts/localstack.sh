#!/usr/bin/env bash
# Installs, starts, stops and reports a native (no Docker) LocalStack for EC2,
# listening on loopback only. Everything lives in the project's .localstack/.
#
#   scripts/localstack.sh install   # venv + localstack-core (idempotent)
#   scripts/localstack.sh start     # start for EC2 on 127.0.0.1:4566, wait until healthy
#   scripts/localstack.sh stop      # stop only the process this script started
#   scripts/localstack.sh status
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOME_DIR="${LOCALSTACK_HOME:-$ROOT/.localstack}"
VENV="$HOME_DIR/venv"
PIDFILE="$HOME_DIR/localstack.pid"
LOG="$HOME_DIR/localstack.log"
LISTEN="${LOCALSTACK_LISTEN:-127.0.0.1:4566}"
HEALTH="http://$LISTEN/_localstack/health"
# The version and dependency date that work with Python 3.11 (newer
# localstack-core needs 3.12; without the date bound pip pulls incompatible
# dependencies).
VERSION="4.14.0"
EXCLUDE_NEWER="2026-02-27"

log() { printf 'localstack.sh: %s\n' "$*" >&2; }

healthy() {
    python3 - "$HEALTH" <<'PY' 2>/dev/null
import json, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        state = json.load(r).get("services", {}).get("ec2")
except Exception:
    sys.exit(1)
sys.exit(0 if state in ("available", "running") else 1)
PY
}

our_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE")"
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

install() {
    if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import localstack.runtime.main' 2>/dev/null; then
        log "already installed in $VENV"
        return
    fi
    local py="${PYTHON:-python3}"
    if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
        log "needs Python 3.11 or newer as $py"
        exit 1
    fi
    log "installing localstack-core $VERSION into $VENV"
    mkdir -p "$HOME_DIR"
    "$py" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check uv
    "$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" \
        --exclude-newer "$EXCLUDE_NEWER" "localstack-core[runtime]==$VERSION"
    log "installed"
}

start() {
    if pid="$(our_pid)" && healthy; then
        log "already running (pid $pid) on $LISTEN"
        return
    fi
    if healthy; then
        log "a LocalStack not started by this script already serves EC2 on $LISTEN; reusing it"
        return
    fi
    install
    mkdir -p "$HOME_DIR/data"
    log "starting on $LISTEN (log: $LOG)"
    # Loopback only, EC2 only, and nothing that calls out: no analytics
    # events, no certificate download, no DNS server. The hypercorn gateway,
    # because the default (twisted) one ignores the host of GATEWAY_LISTEN
    # and would listen on every interface.
    (
        cd "$HOME_DIR"
        export SERVICES=ec2 GATEWAY_LISTEN="$LISTEN" LOCALSTACK_HOST="$LISTEN" \
            DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 DNS_ADDRESS=0 \
            GATEWAY_SERVER=hypercorn \
            EAGER_SERVICE_LOADING=1 \
            LOCALSTACK_VOLUME_DIR="$HOME_DIR/data" FILESYSTEM_ROOT="$HOME_DIR/data"
        exec setsid "$VENV/bin/python" -m localstack.runtime.main </dev/null >"$LOG" 2>&1
    ) &
    echo $! >"$PIDFILE"
    local waited=0
    until healthy; do
        if ! our_pid >/dev/null; then
            log "LocalStack exited while starting; last lines of $LOG:"
            tail -n 30 "$LOG" >&2 || true
            rm -f "$PIDFILE"
            exit 1
        fi
        if ((waited >= 180)); then
            log "not healthy after ${waited}s; see $LOG"
            stop
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    log "EC2 available on $LISTEN after ${waited}s (pid $(cat "$PIDFILE"))"
}

stop() {
    local pid
    if ! pid="$(our_pid)"; then
        rm -f "$PIDFILE"
        log "not running (or not started by this script): nothing to stop"
        return
    fi
    log "stopping pid $pid"
    # setsid made it a process-group leader: stop the whole group.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "still running after 20s; killing"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
    log "stopped"
}

status() {
    if healthy; then
        if pid="$(our_pid)"; then echo "running (pid $pid) on $LISTEN"; else echo "running on $LISTEN (not started by this script)"; fi
    else
        echo "not running"
        return 1
    fi
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *)
        echo "usage: $0 install|start|stop|status" >&2
        exit 2
        ;;
esac
