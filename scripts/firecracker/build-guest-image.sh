#!/usr/bin/env bash
# Builds the guest image for `bazel-diff-snap --driver firecracker`:
#   <out>/rootfs.base.ext4  Debian (bookworm by default) with Bazel, git, the static
#                           bazel-diff and bazel-diff-agent, and an init that starts the agent
#                           on vsock (no network, no ssh, no systemd)
#   <out>/vmlinux           the guest kernel, copied from --kernel (never downloaded: see --help)
# The driver's default --rootfs is rootfs.base.ext4 beside --kernel, so
# `--kernel <out>/vmlinux` is all the driver needs.
#
# Idempotent: the debootstrap tree is kept in <out>/work/ and reused (--fresh rebuilds it); the
# image is rebuilt from it every run and published by rename, so a failed run never leaves a
# half-written image where the driver looks. `mkfs.ext4 -d` fills the filesystem from the tree:
# no loop mount. Needs root (debootstrap), debootstrap, e2fsprogs >= 1.43 and, unless
# --bazel-diff/--agent are given, cargo.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: build-guest-image.sh --out DIR [--kernel PATH] [options]

Builds DIR/rootfs.base.ext4 (and copies the kernel to DIR/vmlinux) for the firecracker driver.

Options:
  --out DIR              Output directory (created).
  --kernel PATH          Guest kernel (uncompressed vmlinux, virtio-blk + virtio-vsock built in).
                         Not downloaded by this script: use a Firecracker CI kernel (see
                         "Getting a rootfs and guest kernel image" in Firecracker's
                         docs/getting-started.md: firecracker-ci/<release>/<arch>/vmlinux-6.1.*)
                         or build one from Firecracker's resources/guest_configs. Without it
                         only the rootfs is built.
  --bazel-diff PATH      Static bazel-diff to install (default: built with cargo, see below).
  --agent PATH           Static bazel-diff-agent to install (default: built with cargo).
  --bazel PATH           A Bazel binary (e.g. bazelisk or a release) installed as
                         /usr/local/bin/bazel instead of Debian's bazel-bootstrap. The guest's
                         Bazel must give the same bazel-diff fingerprint as the host's, or
                         record refuses the image.
  --repo PATH            A git repository cloned into the image at --guest-workspace (so
                         bundles carry only new commits). Default: an empty repository there.
  --guest-workspace DIR  Where the repository lives in the guest (default /work/repo); pass the
                         same to bazel-diff-snap --guest-workspace.
  --agent-port PORT      vsock port the agent listens on (default 10789 = --agent-port's).
  --size SIZE            Image size for truncate(1) (default 8G; sparse). Bazel's output base
                         lives on it: leave room.
  --suite NAME           Debian suite (default bookworm).
  --mirror URL           Debian mirror (default: debootstrap's).
  --packages "A B"       Extra Debian packages.
  --fresh                Rebuild the debootstrap tree from scratch.
  --dry-run              Check the arguments and print the steps; change nothing.
  -h, --help             This help.

Binaries: without --bazel-diff/--agent, `cargo build --release` runs in this repository for
x86_64-unknown-linux-musl when that target and musl-gcc are installed (rustup target add
x86_64-unknown-linux-musl; apt-get install musl-tools), else for the host's glibc target with
+crt-static. Either way the
result must be statically linked (checked): the guest's libc is not the host's.
EOF
}

log() { echo "build-guest-image: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

out="" kernel="" bazel_diff="" agent="" bazel="" repo=""
guest_workspace="/work/repo" agent_port=10789 size="8G" suite="bookworm" mirror=""
packages="" fresh=0 dry_run=0

need_value() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --out) need_value "$@"; out=$2; shift 2 ;;
    --kernel) need_value "$@"; kernel=$2; shift 2 ;;
    --bazel-diff) need_value "$@"; bazel_diff=$2; shift 2 ;;
    --agent) need_value "$@"; agent=$2; shift 2 ;;
    --bazel) need_value "$@"; bazel=$2; shift 2 ;;
    --repo) need_value "$@"; repo=$2; shift 2 ;;
    --guest-workspace) need_value "$@"; guest_workspace=$2; shift 2 ;;
    --agent-port) need_value "$@"; agent_port=$2; shift 2 ;;
    --size) need_value "$@"; size=$2; shift 2 ;;
    --suite) need_value "$@"; suite=$2; shift 2 ;;
    --mirror) need_value "$@"; mirror=$2; shift 2 ;;
    --packages) need_value "$@"; packages=$2; shift 2 ;;
    --fresh) fresh=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

[[ -n $out ]] || { usage >&2; die "--out is required"; }
[[ $agent_port =~ ^[0-9]+$ ]] || die "--agent-port must be a number, not $agent_port"
[[ $guest_workspace == /* ]] || die "--guest-workspace must be absolute, not $guest_workspace"
[[ $size =~ ^[0-9]+[KMGT]?$ ]] || die "--size must look like 8G, not $size"
for f in "$kernel" "$bazel_diff" "$agent" "$bazel"; do
  [[ -z $f || -f $f ]] || die "$f does not exist"
done
[[ -z $repo || -d $repo/.git || -f $repo/HEAD ]] || die "--repo $repo is not a git repository"
[[ -n $kernel ]] || log "no --kernel: building the rootfs only (the driver needs a vmlinux; see --help)"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source_root=$(cd "$here/../.." && pwd)
work="$out/work"
tree="$work/rootfs"

# Each step is printed; --dry-run prints and skips them.
run() {
  log "+ $*"
  if ((!dry_run)); then "$@"; fi
}

if ((!dry_run)); then
  [[ $(id -u) -eq 0 ]] || die "debootstrap needs root; run as root"
  for tool in debootstrap mkfs.ext4 truncate ldd; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install debootstrap e2fsprogs coreutils libc-bin)"
  done
  mkfs_usage=$(mkfs.ext4 2>&1 || true)
  [[ $mkfs_usage == *"-d "* ]] || die "this mkfs.ext4 has no -d (e2fsprogs >= 1.43 needed)"
fi

# 1. The binaries, statically linked.
if [[ -z $bazel_diff || -z $agent ]]; then
  command -v cargo >/dev/null || ((dry_run)) || die "cargo is missing: pass --bazel-diff and --agent"
  installed=$(rustup target list --installed 2>/dev/null || true)
  # musl needs musl-gcc for the C parts of dependencies (apt-get install musl-tools).
  if [[ $'\n'$installed$'\n' == *$'\n'x86_64-unknown-linux-musl$'\n'* ]] && command -v musl-gcc >/dev/null; then
    triple=x86_64-unknown-linux-musl
    rustflags=${RUSTFLAGS:-}
  else
    triple=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')
    triple=${triple:-x86_64-unknown-linux-gnu}
    # glibc static: fine for these binaries (no NSS lookups: no DNS, no user names).
    rustflags="${RUSTFLAGS:-} -C target-feature=+crt-static"
    log "the musl target or musl-gcc is missing; building a static glibc binary for $triple"
  fi
  target_dir=${CARGO_TARGET_DIR:-$source_root/target}
  log "+ RUSTFLAGS='$rustflags' cargo build --release --target $triple -p bazel-diff -p bazel-diff-agent"
  if ((!dry_run)); then
    (cd "$source_root" && RUSTFLAGS=$rustflags cargo build --release --locked --target "$triple" \
      -p bazel-diff -p bazel-diff-agent)
  fi
  bazel_diff=${bazel_diff:-$target_dir/$triple/release/bazel-diff}
  agent=${agent:-$target_dir/$triple/release/bazel-diff-agent}
fi
if ((!dry_run)); then
  for bin in "$bazel_diff" "$agent"; do
    [[ -x $bin ]] || die "$bin is not an executable"
    # ldd says "not a dynamic executable" (or "statically linked") for static binaries.
    linkage=$(ldd "$bin" 2>&1 || true)
    case $linkage in
      *"not a dynamic executable"* | *"statically linked"*) ;;
      *) die "$bin is dynamically linked; the guest needs a static binary (see --help)" ;;
    esac
  done
fi

# 2. The Debian tree (cached).
include="ca-certificates,git,iproute2,tini,procps,util-linux"
if [[ -z $bazel ]]; then include="$include,bazel-bootstrap"; fi
if [[ -n $packages ]]; then include="$include,${packages// /,}"; fi
if ((fresh)) && [[ -d $tree ]]; then run rm -rf "$tree"; fi
if [[ -f $tree/.bazel-diff-debootstrap-done && $(cat "$tree/.bazel-diff-debootstrap-done") == "$suite $include" ]]; then
  log "reusing the debootstrap tree $tree ($suite: $include)"
else
  if [[ -d $tree ]]; then run rm -rf "$tree"; fi
  run mkdir -p "$work"
  args=(--variant=minbase --include="$include" "$suite" "$tree")
  if [[ -n $mirror ]]; then args+=("$mirror"); fi
  run debootstrap "${args[@]}"
  log "+ echo '$suite $include' > $tree/.bazel-diff-debootstrap-done"
  ((dry_run)) || echo "$suite $include" >"$tree/.bazel-diff-debootstrap-done"
fi

# 3. Our files: binaries, init, workspace. Rewritten every run (idempotent).
run install -D -m 0755 "$bazel_diff" "$tree/usr/local/bin/bazel-diff"
run install -D -m 0755 "$agent" "$tree/usr/local/bin/bazel-diff-agent"
if [[ -n $bazel ]]; then run install -D -m 0755 "$bazel" "$tree/usr/local/bin/bazel"; fi

init=$(
  cat <<EOF
#!/bin/sh
# PID 1 of the bazel-diff-snap guest (written by build-guest-image.sh): mounts the pseudo
# filesystems, brings up loopback (the Bazel client talks to its server over 127.0.0.1) and
# runs the agent under tini, which reaps orphans such as exited Bazel servers. No network.
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mountpoint -q /dev/pts || mount -t devpts devpts /dev/pts
mountpoint -q /dev/shm || mount -t tmpfs tmpfs /dev/shm
mountpoint -q /run || mount -t tmpfs tmpfs /run
mountpoint -q /tmp || mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -o remount,rw /
hostname bazel-diff-guest
ip link set lo up
export HOME=/root PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin LANG=C.UTF-8
cd /
exec /usr/bin/tini -- /bin/sh -c 'while :; do /usr/local/bin/bazel-diff-agent --listen vsock:$agent_port; echo "bazel-diff-agent exited (\$?); restarting" >&2; sleep 1; done'
EOF
)
log "+ write $tree/sbin/init (agent on vsock:$agent_port)"
if ((!dry_run)); then
  rm -f "$tree/sbin/init"
  printf '%s\n' "$init" >"$tree/sbin/init"
  chmod 0755 "$tree/sbin/init"
  echo bazel-diff-guest >"$tree/etc/hostname"
  printf '127.0.0.1 localhost bazel-diff-guest\n::1 localhost\n' >"$tree/etc/hosts"
fi

guest_ws="$tree${guest_workspace}"
if [[ -n $repo ]]; then
  run rm -rf "$guest_ws"
  run git clone --quiet --no-hardlinks "$repo" "$guest_ws"
elif [[ ! -d $guest_ws/.git ]]; then
  run git init --quiet "$guest_ws"
fi

# 4. The image, published by rename.
image="$out/rootfs.base.ext4"
run rm -f "$image.tmp"
run truncate -s "$size" "$image.tmp"
run mkfs.ext4 -F -q -L bazel-diff-root -E root_owner=0:0 -d "$tree" "$image.tmp"
run mv -f "$image.tmp" "$image"
if [[ -n $kernel ]]; then
  run install -m 0644 "$kernel" "$out/vmlinux.tmp"
  run mv -f "$out/vmlinux.tmp" "$out/vmlinux"
fi

if ((dry_run)); then
  log "dry run: nothing was changed"
else
  log "built $image ($(du -h --apparent-size "$image" | cut -f1) apparent, $(du -h "$image" | cut -f1) allocated)"
  if [[ -n $kernel ]]; then
    log "use: bazel-diff-snap record --driver firecracker --kernel $out/vmlinux --guest-workspace $guest_workspace ..."
  fi
fi
