#!/usr/bin/env bash
# PostgreSQL 15 with wal2json, for sluice's CDC tests (the `postgres` source: logical decoding).
#
#   scripts/postgres.sh start    install what is missing (Debian: postgresql-15,
#                                postgresql-15-wal2json), create the cluster once (wal_level =
#                                logical), start it if not running, allow wal2json as an
#                                output plugin (idempotent)
#   scripts/postgres.sh stop
#   scripts/postgres.sh status
#
# The cluster lives in SLUICE_PG_DIR (default /var/tmp/sluice-pg: the server runs as the
# `postgres` user, who cannot enter /root), listens on 127.0.0.1:SLUICE_PG_PORT (default
# 54329) and trusts local connections: user postgres, no password. A test cluster only.
set -euo pipefail

log() { printf 'postgres: %s\n' "$*" >&2; }

dir="${SLUICE_PG_DIR:-/var/tmp/sluice-pg}"
port="${SLUICE_PG_PORT:-54329}"
bin=/usr/lib/postgresql/15/bin
data="$dir/data"

as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

install() {
    if [ ! -x "$bin/pg_ctl" ] || [ ! -f /usr/lib/postgresql/15/lib/wal2json.so ]; then
        log "installing postgresql-15 and postgresql-15-wal2json"
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get install -y postgresql-15 postgresql-15-wal2json >&2
    fi
}

running() {
    as_postgres "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1
}

sql() {
    as_postgres "$bin/psql" -X -q -At -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -c "$1"
}

# PostgreSQL 15.19 and later (CVE-2026-6471; Debian 15.19-0+deb12u1 on)
# load only the logical-decoding output plugins named in `output_plugin_libraries` (default
# `pgoutput, test_decoding`). Where the setting exists and lacks wal2json, add it with ALTER
# SYSTEM (kept in postgresql.auto.conf, so a cluster made by an older version of this script
# gets it too) and reload; older servers have no such setting and need nothing. The setting
# cannot go into postgresql.conf at initdb: a server without it would refuse to start.
allow_wal2json() {
    local current
    current="$(sql "SELECT setting FROM pg_settings WHERE name = 'output_plugin_libraries'")"
    if [ -z "$current" ] && [ "$(sql "SELECT count(*) FROM pg_settings WHERE name = 'output_plugin_libraries'")" = 0 ]; then
        return 0
    fi
    case ",$(printf '%s' "$current" | tr -d ' ')," in
    *,wal2json,*) ;;
    *)
        local list
        list="$(printf '%s' "$current" | tr -d ' ' | tr ',' '\n' | grep -v '^$' | paste -sd, -)"
        list="${list:+$list,}wal2json"
        log "allowing wal2json as an output plugin (output_plugin_libraries = $list)"
        sql "ALTER SYSTEM SET output_plugin_libraries = ${list//,/, }" >/dev/null
        sql "SELECT pg_reload_conf()" >/dev/null
        ;;
    esac
    # A reload reaches new sessions once the postmaster has read the file: wait for it, then
    # check the way the tests will use it (a temporary slot, dropped when the session ends).
    local i
    for i in $(seq 50); do
        case ",$(sql "SHOW output_plugin_libraries" | tr -d ' ')," in
        *,wal2json,*) break ;;
        esac
        sleep 0.1
    done
    sql "SELECT pg_create_logical_replication_slot('sluice_setup_check', 'wal2json', true)" >/dev/null || {
        log "wal2json is still refused as an output plugin (see $dir/server.log)"
        exit 1
    }
}

case "${1:-start}" in
start)
    install
    if [ ! -f "$data/PG_VERSION" ]; then
        log "creating the cluster in $data"
        mkdir -p "$dir"
        [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
        as_postgres "$bin/initdb" -D "$data" -A trust -U postgres >/dev/null
        cat >>"$data/postgresql.conf" <<CONF
# sluice's test cluster
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
wal_level = logical
max_replication_slots = 64
max_wal_senders = 8
fsync = on
CONF
    fi
    if running; then
        log "running on 127.0.0.1:$port"
    else
        as_postgres "$bin/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 start >/dev/null
        log "started on 127.0.0.1:$port (log: $dir/server.log)"
    fi
    allow_wal2json
    ;;
stop)
    if running; then
        as_postgres "$bin/pg_ctl" -D "$data" -w stop >/dev/null
        log "stopped"
    fi
    ;;
status)
    if running; then
        echo "running on 127.0.0.1:$port"
    else
        echo "not running"
        exit 1
    fi
    ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
