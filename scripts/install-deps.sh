#!/usr/bin/env bash
# Installs what building and testing this project needs on a Debian machine:
#   bazel-bootstrap (Bazel 4.2.3, the only Bazel these machines can get), git, a C toolchain.
#   the shellcheck linter, moto[server] from PyPI (the S3-compatible server of the shared-store tests), python3 if missing.
# Rust itself comes from the machine's rustup; this script only checks that cargo is there.
# Idempotent, and quiet unless it installs something. Installing needs root (or sudo).
set -euo pipefail

log() { echo "install-deps: $*" >&2; }

missing=()
dpkg-query -W -f='${Status}' bazel-bootstrap 2>/dev/null | grep -q 'install ok installed' \
  || missing+=(bazel-bootstrap)
command -v git >/dev/null 2>&1 || missing+=(git)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-pip)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)

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

# moto (PyPI): the S3-compatible server the shared-store tests start on a loopback port.
if ! python3 -c 'import moto.server, flask, werkzeug' >/dev/null 2>&1; then
  log "installing moto[server] from PyPI"
  pip=(python3 -m pip install --quiet --disable-pip-version-check 'moto[server]')
  # Debian's own python3 refuses pip installs without this flag (PEP 668).
  "${pip[@]}" >/dev/null 2>&1 || "${pip[@]}" --break-system-packages >/dev/null \
    || { log "pip install 'moto[server]' failed"; exit 1; }
  python3 -c 'import moto.server, flask, werkzeug' \
    || { log "moto was installed but cannot be imported"; exit 1; }
  log "installed moto"
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
