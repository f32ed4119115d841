#!/usr/bin/env bash
# The whole test suite: dependencies, formatting, clippy, then every test of the workspace.
# Stops at the first failing step and says which one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# rustup's default location, in case the caller's PATH lacks it (e.g. a non-login shell).
if ! command -v cargo >/dev/null 2>&1 && [[ -x "${HOME:-/root}/.cargo/bin/cargo" ]]; then
  PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi

step() { echo "==> $*" >&2; }
fail() {
  echo "test.sh: FAILED at: $1" >&2
  exit 1
}

step "install-deps"
scripts/install-deps.sh || fail "scripts/install-deps.sh"

step "cargo fmt --all -- --check"
cargo fmt --all -- --check || fail "formatting (fix with: cargo fmt --all)"

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings || fail "clippy"

# End-to-end tests drive the binaries of other packages (bazel-diff-snap runs bazel-diff).
step "cargo build --workspace --bins"
cargo build --workspace --bins || fail "cargo build --workspace --bins"

if cargo nextest --version >/dev/null 2>&1; then
  # nextest does not run doctests: run those first, so the suite's closing lines are nextest's.
  step "cargo test --workspace --doc"
  cargo test --workspace --doc || fail "doctests"
  step "cargo nextest run --workspace"
  cargo nextest run --workspace || fail "tests (cargo nextest run --workspace)"
else
  step "cargo test --workspace (cargo-nextest not installed)"
  cargo test --workspace || fail "tests (cargo test --workspace)"
fi
echo "test.sh: all checks passed" >&2
