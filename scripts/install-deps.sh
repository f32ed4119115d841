#!/usr/bin/env bash
# Installs what building and testing this project needs on a Debian machine:
#   bazel-bootstrap (Bazel 4.2.3, the only Bazel these machines can get), git, a C toolchain.
# Rust itself comes from the machine's rustup; this script only checks that cargo is there.
# Idempotent, and quiet unless it installs something. Installing needs root (or sudo).
set -euo pipefail

log() { echo "install-deps: $*" >&2; }

missing=()
dpkg-query -W -f='${Status}' bazel-bootstrap 2>/dev/null | grep -q 'install ok installed' \
  || missing+=(bazel-bootstrap)
command -v git >/dev/null 2>&1 || missing+=(git)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)

if ((${#missing[@]})); then
  if ! command -v apt-get >/dev/null 2>&1; then
    log "missing ${missing[*]} and apt-get is not available: install them by hand"
    exit 1
  fi
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
    else
      log "missing ${missing[*]}: run this script as root"
      exit 1
    fi
  fi
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Only refresh the package lists when something is actually missing.
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
  log "installed ${missing[*]}"
fi

if ! bazel --version >/dev/null 2>&1; then
  log "bazel-bootstrap is installed but \`bazel --version\` fails; check /usr/bin/bazel"
  exit 1
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [[ -x "${HOME:-/root}/.cargo/bin/cargo" ]]; then
    log "cargo is in ${HOME:-/root}/.cargo/bin but not on PATH: run \`source ~/.cargo/env\` (or add it to PATH)"
  else
    log "cargo not found: this project needs the Rust toolchain from rustup (https://rustup.rs),"
    log "which these machines provide; it cannot be installed from Debian packages here"
  fi
  exit 1
fi
