#!/usr/bin/env bash
# Installs what sluice needs on a Debian machine of this kind; idempotent (a second run only
# checks). Called by `make demo` and `make test`; safe to run by hand.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

missing=()
# rocksdb (built from source by the rocksdb crate) needs libclang for bindgen, and a C++ compiler.
for pkg in libclang-dev g++ make; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || { log "cargo is not installed: install Rust (rustup) first"; exit 1; }

# ONNX Runtime for model scoring: the shared library from the PyPI wheel, into a folder of
# the project's own (.tools/, not committed). sluice finds it there, or through ORT_DYLIB_PATH.
ORT_VERSION=1.31.1
root="$(cd "$(dirname "$0")/.." && pwd)"
ort_dir="$root/.tools/onnxruntime"
ort_lib="$ort_dir/libonnxruntime.so.$ORT_VERSION"
if [ ! -f "$ort_lib" ]; then
  log "installing ONNX Runtime $ORT_VERSION into $ort_dir"
  command -v python3 >/dev/null || { log "python3 is needed to fetch ONNX Runtime"; exit 1; }
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "onnxruntime==$ORT_VERSION"
  mkdir -p "$ort_dir"
  python3 - "$tmp" "$ort_dir" "$ORT_VERSION" <<'PY'
import glob, sys, zipfile
tmp, out, version = sys.argv[1:]
wheel = glob.glob(f"{tmp}/onnxruntime-{version}-*.whl")[0]
name = f"onnxruntime/capi/libonnxruntime.so.{version}"
with zipfile.ZipFile(wheel) as z, open(f"{out}/libonnxruntime.so.{version}", "wb") as f:
    f.write(z.read(name))
PY
  rm -rf "$tmp"
fi
log "ok"
