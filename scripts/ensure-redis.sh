#!/usr/bin/env bash
# Prints a redis:// URL that answers PING on stdout (and nothing else there), for the test suite.
#
# Reuses 127.0.0.1:6379 when it answers; otherwise starts a throwaway, unpersisted redis-server
# on a free port, installing the binary with apt-get only when it is missing (CI images).
# Usage: ensure-redis.sh [PIDFILE]  -- when a server is started, its pid goes to PIDFILE so the
# caller can stop it; a reused server is never written there.
# ENSURE_REDIS_PORT (default 6379) is the port worth reusing; tests point it at a dead port.
set -euo pipefail

HOST=127.0.0.1
REUSE_PORT=${ENSURE_REDIS_PORT:-6379}
PIDFILE=${1:-}

# PING over bash's /dev/tcp: works before redis-tools is installed, and a server that wants
# AUTH answers -NOAUTH, which correctly counts as unusable.
answers_ping() {
    timeout 2 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "PING\r\n" >&3
        IFS= read -r -t 1 reply <&3 && [[ $reply == "+PONG"* ]]
    ' "$HOST" "$1" 2>/dev/null
}

install_redis() {
    command -v redis-server >/dev/null && return 0
    echo "ensure-redis: redis-server missing, installing it with apt-get" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    { $sudo apt-get update && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y redis-server; } >&2
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

if answers_ping "$REUSE_PORT"; then
    echo "redis://$HOST:$REUSE_PORT/0"
    exit 0
fi

install_redis
# The port can be taken between free_port and the bind; a daemonised redis-server still exits 0
# then, so success is judged by PING, and a few ports are tried.
for _ in 1 2 3 4 5; do
    port=$(free_port)
    redis-server --daemonize yes --bind "$HOST" --port "$port" --save '' --appendonly no \
        ${PIDFILE:+--pidfile "$PIDFILE"} >&2
    for _ in $(seq 50); do
        if answers_ping "$port"; then
            echo "ensure-redis: started redis-server on $HOST:$port" >&2
            echo "redis://$HOST:$port/0"
            exit 0
        fi
        sleep 0.1
    done
done
echo "ensure-redis: could not start redis-server" >&2
exit 1
