#!/bin/sh
# A private PostgreSQL cluster for the control-plane tests.
#   pg.sh start DIR   initdb in DIR/data, listen on a unix socket in DIR and on 127.0.0.1 at a
#                     free port, create database "wrenn", print its connection URL
#   pg.sh stop DIR    stop the cluster started in DIR (pg_ctl reads DIR/data/postmaster.pid)
# PostgreSQL refuses to run as root, so as root the server runs as the `postgres` OS user.
set -eu
BIN=${WRENN_PG_BIN:-/usr/lib/postgresql/15/bin}
cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: pg.sh start|stop DIR" >&2; exit 2; }
if [ "$(id -u)" = 0 ]; then
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi
case "$cmd" in
start)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    as_pg "$BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-sync \
        >"$dir/initdb.log" 2>&1
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    as_pg "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        start >"$dir/pg_ctl.log" 2>&1
    as_pg "$BIN/createdb" -h "$dir" -p "$port" -U postgres wrenn
    echo "postgres://postgres@127.0.0.1:$port/wrenn?sslmode=disable"
    ;;
stop)
    [ -f "$dir/data/postmaster.pid" ] || exit 0
    as_pg "$BIN/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1
    ;;
*)
    echo "usage: pg.sh start|stop DIR" >&2
    exit 2
    ;;
esac
