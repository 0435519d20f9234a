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
log "ok"
