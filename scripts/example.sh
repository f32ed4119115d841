#!/usr/bin/env bash
# The main job on a small built-in example: generate a ~1.5k-target Bazel workspace with two
# commits (bazel-diff-bench gen), hash both revisions with bazel-diff, print what is impacted.
#
# Environment: EXAMPLE_TARGETS (default 1500), EXAMPLE_MUTATIONS (default "content:1 new-target:1"),
# KEEP=1 to keep the temporary directory (workspace, hashes, Bazel output root) for inspection,
# BAZEL_DIFF=/path/to/bazel-diff to use that binary instead of building this repo's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD

if ! command -v cargo >/dev/null 2>&1 && [[ -x "${HOME:-/root}/.cargo/bin/cargo" ]]; then
  PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi

log() { echo "example: $*" >&2; }
die() {
  log "FAILED: $*"
  exit 1
}

scripts/install-deps.sh || die "scripts/install-deps.sh"

target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
target_dir=${target_dir:-${CARGO_TARGET_DIR:-$repo/target}}
bench="$target_dir/release/bazel-diff-bench"
if [[ -n "${BAZEL_DIFF:-}" ]]; then
  bazel_diff=$BAZEL_DIFF
  log "building bazel-diff-bench (release); bazel-diff is $bazel_diff"
  cargo build --release --quiet -p bazel-diff-bench || die "cargo build -p bazel-diff-bench"
else
  bazel_diff="$target_dir/release/bazel-diff"
  log "building bazel-diff and bazel-diff-bench (release)"
  cargo build --release --quiet -p bazel-diff -p bazel-diff-bench || die "cargo build"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/bazel-diff-example.XXXXXX")
ws="$tmp/ws"
root="$tmp/bazel-root" # private output user root: our own Bazel server, shut down below
bazel=$(command -v bazel)
cleanup() {
  if [[ -d "$ws" && -d "$root" ]]; then
    (cd "$ws" && "$bazel" --output_user_root="$root" shutdown >/dev/null 2>&1) || true
  fi
  if [[ "${KEEP:-0}" == 1 ]]; then
    log "kept $tmp"
  else
    rm -rf "$tmp"
  fi
}
trap cleanup EXIT

mutation_args=()
for m in ${EXAMPLE_MUTATIONS:-content:1 new-target:1}; do
  mutation_args+=(--mutation "$m")
done
log "generating a ~${EXAMPLE_TARGETS:-1500}-target workspace in $ws"
"$bench" gen "$ws" --targets "${EXAMPLE_TARGETS:-1500}" --git --commits 2 "${mutation_args[@]}" >"$tmp/gen.json" \
  || die "bazel-diff-bench gen"
mapfile -t shas < <(git -C "$ws" rev-list --reverse HEAD)
((${#shas[@]} == 2)) || die "expected 2 commits in $ws, found ${#shas[@]}"
log "commits: base ${shas[0]}, final ${shas[1]}"
log "changed files: $(git -C "$ws" diff --name-only "${shas[0]}" "${shas[1]}" | tr '\n' ' ')"

hash_at() { # <sha> <output json>
  git -C "$ws" checkout -q "$1" || die "git checkout $1"
  "$bazel_diff" generate-hashes -w "$ws" -b "$bazel" -so "--output_user_root=$root" "$2" \
    || die "bazel-diff generate-hashes at $1"
  [[ -s "$2" ]] || die "bazel-diff generate-hashes at $1 wrote no $2"
}
log "hashing the base revision"
hash_at "${shas[0]}" "$tmp/start.json"
log "hashing the final revision"
hash_at "${shas[1]}" "$tmp/final.json"

"$bazel_diff" get-impacted-targets -w "$ws" -sh "$tmp/start.json" -fh "$tmp/final.json" -o "$tmp/impacted.txt" \
  || die "bazel-diff get-impacted-targets"
[[ -f "$tmp/impacted.txt" ]] || die "bazel-diff get-impacted-targets wrote no $tmp/impacted.txt"

count=$(grep -c . "$tmp/impacted.txt" || true)
log "$count impacted targets:"
cat "$tmp/impacted.txt"
