#!/usr/bin/env bash
# Several apikey-mcp replicas on one machine behind nginx, all on one PostgreSQL ledger (README: Scaling out).
#
#   deploy/scale-out.sh start     # the replicas, then nginx in front of them; prints the balancer's URL
#   deploy/scale-out.sh status    # what runs, by the pids start recorded
#   deploy/scale-out.sh stop      # stops what start started, and only that (by its recorded pids)
#
# Settings, from the environment:
#   APIKEY_DATABASE_URL       required: postgresql://... , the one ledger every replica shares
#   APIKEY_REQUEST_STATE_KEY  the same on every replica (32+ characters); if unset, generated once and kept
#                             in $RUN_DIR/request-state-key
#   APIKEY_API_KEY, APIKEY_MCP_AUTH_TOKENS, APIKEY_WEBHOOK_SECRET, APIKEY_PUBLIC_URL, ...: as for one server
#   SANDBOX=1                 no account needed: one `apikey-mcp sandbox` gateway (on SANDBOX_PORT, 8787) serves
#                             every replica, with callbacks through the balancer
#   RUN_DIR                   pids, logs and nginx's files (its prefix is $RUN_DIR/nginx); default ./.scale-out
#   LISTEN                    the balancer's address, default 127.0.0.1:8000
#   REPLICA_PORTS             the replicas' ports on 127.0.0.1, default "8001 8002 8003"
#   APIKEY_MCP, NGINX_BIN, PYTHON  the commands (default: apikey-mcp and nginx from PATH or /usr/sbin, python3)
#
# From a clone: pip install -e '.[postgres]' (psycopg 3 and its pool) in the virtual environment first.
set -euo pipefail

RUN_DIR=${RUN_DIR:-$PWD/.scale-out}
LISTEN=${LISTEN:-127.0.0.1:8000}
REPLICA_PORTS=${REPLICA_PORTS:-8001 8002 8003}
SANDBOX_PORT=${SANDBOX_PORT:-8787}
APIKEY_MCP=${APIKEY_MCP:-apikey-mcp}
PYTHON=${PYTHON:-python3}
NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PREFIX=$RUN_DIR/nginx

die() { echo "scale-out: $*" >&2; exit 1; }

wait_healthy() {  # URL NAME LOG: until GET URL/healthz answers 200, for at most 60 s
    local deadline=$((SECONDS + 60))
    until "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/healthz", timeout=2)' "$1" \
            2>/dev/null; do
        ((SECONDS < deadline)) || { tail -n 20 "$3" >&2; die "$2 did not become healthy at $1 (log: $3)"; }
        sleep 0.2
    done
}

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

launch() {  # NAME COMMAND...: in the background, its log and pid in RUN_DIR
    local name=$1; shift
    nohup "$@" >"$RUN_DIR/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN_DIR/$name.pid"
}

nginx_conf() {  # deploy/nginx.conf with LISTEN and REPLICA_PORTS in place of the example's 8000 and 8001-8003
    local upstreams="" port
    for port in $REPLICA_PORTS; do
        upstreams+="        server 127.0.0.1:$port max_fails=1 fail_timeout=5s;\n"
    done
    sed -e "/server 127\.0\.0\.1:800[2-9] /d" \
        -e "s|^ *server 127\.0\.0\.1:8001 .*|$upstreams|" \
        -e "s|listen 127\.0\.0\.1:8000;|listen $LISTEN;|" "$HERE/nginx.conf"
}

start() {
    [[ -n ${APIKEY_DATABASE_URL:-} ]] || die "set APIKEY_DATABASE_URL=postgresql://... (the ledger every replica shares)"
    command -v "$APIKEY_MCP" >/dev/null || die "$APIKEY_MCP not found: activate the virtual environment (pip install -e '.[postgres]')"
    [[ -x $NGINX_BIN ]] || die "nginx not found: apt-get install nginx-light (or set NGINX_BIN)"
    mkdir -p "$PREFIX"
    for pidfile in "$RUN_DIR"/*.pid; do
        if alive "$pidfile"; then die "already running ($pidfile): deploy/scale-out.sh stop first"; fi
    done
    if [[ -z ${APIKEY_REQUEST_STATE_KEY:-} ]]; then
        [[ -f $RUN_DIR/request-state-key ]] ||
            (umask 077 && "$PYTHON" -c 'import secrets; print(secrets.token_hex(32))' >"$RUN_DIR/request-state-key")
        APIKEY_REQUEST_STATE_KEY=$(cat "$RUN_DIR/request-state-key")
    fi
    export APIKEY_REQUEST_STATE_KEY
    if [[ ${SANDBOX:-0} == 1 ]]; then
        local key secret
        key=sk-scale-out-$("$PYTHON" -c 'import secrets; print(secrets.token_hex(12))')
        secret=whsec_$("$PYTHON" -c 'import secrets; print(secrets.token_hex(16))')
        launch sandbox "$APIKEY_MCP" sandbox --host 127.0.0.1 --port "$SANDBOX_PORT" --key "$key" --webhook-secret "$secret"
        wait_healthy "http://127.0.0.1:$SANDBOX_PORT" sandbox "$RUN_DIR/sandbox.log"
        export APIKEY_BASE_URL=http://127.0.0.1:$SANDBOX_PORT APIKEY_API_KEY=$key APIKEY_WEBHOOK_SECRET=$secret
        export APIKEY_PUBLIC_URL=${APIKEY_PUBLIC_URL:-http://$LISTEN}
    fi
    local port
    for port in $REPLICA_PORTS; do
        launch "replica-$port" "$APIKEY_MCP" --transport streamable-http --host 127.0.0.1 --port "$port" \
            --forwarded-allow-ips 127.0.0.1
    done
    for port in $REPLICA_PORTS; do
        wait_healthy "http://127.0.0.1:$port" "replica $port" "$RUN_DIR/replica-$port.log"
    done
    nginx_conf >"$PREFIX/nginx.conf"
    # nginx daemonizes (its pid: $PREFIX/nginx.pid); its own output goes to a file, so that it holds no caller's pipe
    env -u NGINX "$NGINX_BIN" -e "$PREFIX/error.log" -p "$PREFIX" -c "$PREFIX/nginx.conf" >"$PREFIX/start.log" 2>&1 ||
        { cat "$PREFIX/start.log" >&2; die "nginx did not start"; }
    wait_healthy "http://$LISTEN" nginx "$PREFIX/error.log"
    echo "scale-out: $(wc -w <<<"$REPLICA_PORTS") replicas behind http://$LISTEN/mcp (logs in $RUN_DIR);" \
        "stop with: RUN_DIR=$RUN_DIR $0 stop"
}

stop() {
    if alive "$PREFIX/nginx.pid"; then
        env -u NGINX "$NGINX_BIN" -e "$PREFIX/error.log" -p "$PREFIX" -c "$PREFIX/nginx.conf" -s quit
    fi
    local pidfile pids=()
    for pidfile in "$RUN_DIR"/*.pid; do
        if alive "$pidfile"; then
            pids+=("$(cat "$pidfile")")
            kill -TERM "${pids[-1]}"
        fi
    done
    local deadline=$((SECONDS + 40))  # the replicas give calls in flight 30 s (APIKEY_SHUTDOWN_GRACE_SECONDS)
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
    done
    local deadline=$((SECONDS + 10))
    while alive "$PREFIX/nginx.pid" && ((SECONDS < deadline)); do sleep 0.2; done
    rm -f "$RUN_DIR"/*.pid
    echo "scale-out: stopped (${#pids[@]} processes and nginx); logs stay in $RUN_DIR"
}

status() {
    local pidfile state
    [[ -n $(compgen -G "$RUN_DIR/*.pid") || -f $PREFIX/nginx.pid ]] || { echo "scale-out: nothing runs from $RUN_DIR"; return; }
    for pidfile in "$RUN_DIR"/*.pid "$PREFIX/nginx.pid"; do
        [[ -f $pidfile ]] || continue
        if alive "$pidfile"; then state=running; else state=stopped; fi
        echo "$(basename "$pidfile" .pid) (pid $(cat "$pidfile")): $state"
    done
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status (settings: see the top of this script)" >&2; exit 2 ;;
esac
