#!/usr/bin/env bash
# Checks that this host can run `bazel-diff-snap --driver firecracker` and prints, for every
# missing piece, the command that fixes it. Changes nothing unless --apply is given, and then
# only the safe, idempotent fixes (the KVM ACL and the userfaultfd sysctl). Exit 0 when
# everything needed is there, 1 when something is missing (warnings do not fail).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: setup-host.sh [--check] [--apply] [--user NAME] [--store DIR]
                     [--firecracker PATH] [--jailer PATH] [--chroot-base DIR]
                     [--memory-backend file|uffd]

Checks the host for the firecracker driver of bazel-diff-snap:
  /dev/kvm           exists and is read-write for --user
  firecracker        runs (`--version`), and the jailer when --jailer is given; same versions
  host kernel        5.10 or newer (Firecracker's supported host kernels)
  userfaultfd        with --memory-backend uffd: vm.unprivileged_userfaultfd=1, or
                     /dev/userfaultfd usable by --user, or --user is root
  vsock              hybrid vsock (unix socket on the host): no host module; checks the
                     store's run-directory socket paths fit in 107 bytes
  store filesystem   reflink support (copy-on-write disk clones; else every VM copies the disk)
  cgroup v2          for the jailer
  chroot base        with --jailer: on the store's filesystem (entry files are hard-linked
                     into each jail; across filesystems they are copied)

Options:
  --check                Only check (the default).
  --apply                Also apply the safe fixes: setfacl on /dev/kvm for --user, and
                         vm.unprivileged_userfaultfd=1 persisted in /etc/sysctl.d (uffd backend,
                         non-root user only). Needs root. Idempotent.
  --user NAME            The user bazel-diff-snap runs as (default: the current user).
  --store DIR            The snapshot store directory to check (created if missing with --apply).
  --firecracker PATH     The firecracker binary (default: firecracker on PATH).
  --jailer PATH          The jailer binary (checked only when given).
  --chroot-base DIR      The jailer's chroot base (bazel-diff-snap --chroot-base; default
                         /srv/jailer).
  --memory-backend KIND  file (default) or uffd.
  -h, --help             This help.
EOF
}

apply=0 user=$(id -un) store="" firecracker="" jailer="" backend=file chroot_base=/srv/jailer
need_value() { [[ $# -ge 2 && -n $2 ]] || { echo "setup-host: $1 needs a value" >&2; exit 1; }; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --check) shift ;;
    --apply) apply=1; shift ;;
    --user) need_value "$@"; user=$2; shift 2 ;;
    --store) need_value "$@"; store=$2; shift 2 ;;
    --firecracker) need_value "$@"; firecracker=$2; shift 2 ;;
    --jailer) need_value "$@"; jailer=$2; shift 2 ;;
    --chroot-base) need_value "$@"; chroot_base=$2; shift 2 ;;
    --memory-backend) need_value "$@"; backend=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; echo "setup-host: unknown argument: $1" >&2; exit 1 ;;
  esac
done
[[ $backend == file || $backend == uffd ]] || { echo "setup-host: --memory-backend is file or uffd" >&2; exit 1; }
id "$user" >/dev/null 2>&1 || { echo "setup-host: no such user: $user" >&2; exit 1; }
uid=$(id -u "$user")
if ((apply)) && [[ $(id -u) -ne 0 ]]; then
  echo "setup-host: --apply needs root" >&2
  exit 1
fi

missing=0
ok() { printf 'ok       %s\n' "$*"; }
warn() { printf 'warning  %s\n' "$1"; [[ -z ${2:-} ]] || printf '         fix: %s\n' "$2"; }
miss() {
  printf 'MISSING  %s\n         fix: %s\n' "$1" "$2"
  missing=$((missing + 1))
}
# Whether --user can open the device PATH read-write (as that user when we are root and it is
# not). Opening, not test -r/-w: those ignore permissions for root and say nothing of the driver.
user_rw() {
  if [[ $uid -eq $(id -u) ]]; then
    (exec 3<>"$1") 2>/dev/null
  elif command -v runuser >/dev/null; then
    # shellcheck disable=SC2016 # $1 expands in the inner shell
    runuser -u "$user" -- sh -c 'exec 3<>"$1"' sh "$1" 2>/dev/null
  else
    return 1
  fi
}

# KVM.
if [[ ! -e /dev/kvm ]]; then
  if grep -qE '\b(vmx|svm)\b' /proc/cpuinfo 2>/dev/null; then
    miss "/dev/kvm does not exist (the CPU has virtualization extensions)" \
      "modprobe kvm_intel  # or kvm_amd; and check virtualization is enabled in the firmware"
  else
    miss "/dev/kvm does not exist and the CPU shows no vmx/svm flag (a VM without nested virtualization?)" \
      "run on bare metal (e.g. an EC2 .metal instance) or a VM with nested virtualization enabled"
  fi
elif user_rw /dev/kvm; then
  ok "/dev/kvm is read-write for $user"
elif ((apply)) && command -v setfacl >/dev/null; then
  setfacl -m "u:$user:rw" /dev/kvm
  ok "/dev/kvm: granted rw to $user (setfacl; lost at reboot, prefer the kvm group)"
else
  miss "/dev/kvm is not read-write for $user" \
    "usermod -aG kvm $user  (then log in again), or: setfacl -m u:$user:rw /dev/kvm"
fi

# Firecracker and the jailer.
version_of() { "$1" --version 2>/dev/null | grep -oE 'v?[0-9]+\.[0-9]+\.[0-9]+' | head -n1 | sed 's/^v//'; }
release_fix="download firecracker-<version>-$(uname -m).tgz from Firecracker's GitHub releases, then install release-*/firecracker-* as /usr/local/bin/firecracker and release-*/jailer-* as /usr/local/bin/jailer"
fc_version=""
if [[ -z $firecracker ]]; then firecracker=$(command -v firecracker || true); fi
if [[ -z $firecracker ]]; then
  miss "no firecracker binary on PATH" "$release_fix (or pass --firecracker-bin to bazel-diff-snap)"
elif [[ ! -x $firecracker ]]; then
  miss "$firecracker is not executable" "chmod +x $firecracker"
else
  fc_version=$(version_of "$firecracker" || true)
  if [[ -z $fc_version ]]; then
    miss "$firecracker --version printed no version" "$release_fix"
  else
    ok "firecracker $fc_version ($firecracker)"
    major=${fc_version%%.*}
    if ((major < 1)); then
      miss "firecracker $fc_version is too old (the driver uses the 1.x API: snapshot mem_backend, entropy device)" "$release_fix"
    fi
  fi
fi
if [[ -n $jailer ]]; then
  if [[ ! -x $jailer ]]; then
    miss "jailer $jailer is not executable" "$release_fix"
  else
    jailer_version=$(version_of "$jailer" || true)
    if [[ -z $jailer_version ]]; then
      miss "$jailer --version printed no version" "$release_fix"
    elif [[ -n $fc_version && $jailer_version != "$fc_version" ]]; then
      miss "jailer $jailer_version and firecracker $fc_version differ" "install both from one release"
    else
      ok "jailer $jailer_version ($jailer)"
    fi
  fi
  if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
    ok "cgroup v2 is mounted (jailer --cgroup-version 2)"
  else
    warn "cgroup v2 is not mounted at /sys/fs/cgroup: the jailer falls back to v1, where restores are slow" \
      "boot with systemd.unified_cgroup_hierarchy=1"
  fi
fi

# Host kernel.
release=$(uname -r)
kmajor=${release%%.*}
kminor=${release#*.}
kminor=${kminor%%.*}
if ((kmajor > 5 || (kmajor == 5 && kminor >= 10))); then
  ok "host kernel $release"
else
  miss "host kernel $release is older than 5.10 (Firecracker supports 5.10 and 6.1 hosts)" "upgrade the host kernel"
fi

# userfaultfd (Firecracker registers guest memory with one for the Uffd backend).
if [[ $backend == uffd ]]; then
  sysctl_file=/proc/sys/vm/unprivileged_userfaultfd
  unpriv=$(cat "$sysctl_file" 2>/dev/null || echo "?")
  if [[ $uid -eq 0 ]]; then
    ok "userfaultfd: $user is root"
  elif [[ $unpriv == 1 ]]; then
    ok "userfaultfd: vm.unprivileged_userfaultfd=1"
  elif [[ -e /dev/userfaultfd ]] && user_rw /dev/userfaultfd; then
    ok "userfaultfd: /dev/userfaultfd is read-write for $user"
  elif ((apply)); then
    echo "vm.unprivileged_userfaultfd = 1" >/etc/sysctl.d/60-bazel-diff-snap-uffd.conf
    sysctl -q -w vm.unprivileged_userfaultfd=1
    ok "userfaultfd: set vm.unprivileged_userfaultfd=1 (persisted in /etc/sysctl.d/60-bazel-diff-snap-uffd.conf)"
  else
    miss "userfaultfd is not available to $user (vm.unprivileged_userfaultfd=$unpriv, no usable /dev/userfaultfd)" \
      "sysctl -w vm.unprivileged_userfaultfd=1 (persist in /etc/sysctl.d), or grant $user /dev/userfaultfd, or use --memory-backend file"
  fi
else
  ok "userfaultfd: not needed (--memory-backend file)"
fi

# Store: vsock/uffd socket paths and reflink.
if [[ -z $store ]]; then
  warn "no --store given: socket-path length and reflink support not checked"
else
  if [[ ! -d $store ]] && ((apply)); then mkdir -p "$store"; fi
  if [[ ! -d $store ]]; then
    miss "the store $store does not exist" "mkdir -p $store (on a reflink-capable filesystem)"
  else
    abs=$(cd "$store" && pwd)
    # <store>/.work/<16 hex>/vm/con-XXXXXX/uffd.sock, the longest socket a VM binds.
    longest="$abs/.work/0123456789abcdef/vm/con-XXXXXX/uffd.sock"
    if ((${#longest} <= 107)); then
      ok "socket paths fit: ${#longest} of 107 bytes (hybrid vsock needs no host module)"
    else
      miss "the store path is too long for the VMs' unix sockets (${#longest} > 107 bytes)" "use a shorter --store path"
    fi
    fstype=$(stat -f -c %T "$abs" 2>/dev/null || echo unknown)
    probe=$(mktemp "$abs/.reflink-probe.XXXXXX")
    printf 'probe' >"$probe"
    if cp --reflink=always "$probe" "$probe.clone" 2>/dev/null; then
      ok "the store ($fstype) supports reflinks: disk clones are instant and share blocks"
    else
      warn "the store's filesystem ($fstype) has no reflinks: every VM copies its disk (sparse copy) and every entry stores a full disk" \
        "put the store on XFS (mkfs.xfs -m reflink=1) or btrfs"
    fi
    rm -f "$probe" "$probe.clone"
    if [[ -n $jailer ]]; then
      if [[ ! -d $chroot_base ]] && ((apply)); then mkdir -p "$chroot_base"; fi
      if [[ ! -d $chroot_base ]]; then
        miss "the chroot base $chroot_base does not exist" "mkdir -p $chroot_base (on the store's filesystem)"
      elif [[ $(stat -c %d "$chroot_base") == "$(stat -c %d "$abs")" ]]; then
        ok "the chroot base $chroot_base is on the store's filesystem (entry files are hard-linked into jails)"
      else
        warn "the chroot base $chroot_base is not on the store's filesystem: every restore copies the entry's memory into its jail" \
          "use a --chroot-base on the store's filesystem"
      fi
    fi
    avail=$(df -Pk "$abs" | awk 'NR == 2 { print int($4 / 1048576) }')
    if ((avail >= 20)); then
      ok "${avail} GiB free in the store"
    else
      warn "only ${avail} GiB free in the store: an entry holds a memory file of --mem-mib plus a disk" \
        "free space, or gc the store: bazel-diff-snap gc --max-bytes ..."
    fi
  fi
fi

if ((missing)); then
  echo "setup-host: $missing thing(s) missing; the firecracker driver will exit 2 (no usable snapshot) until they are fixed"
  exit 1
fi
echo "setup-host: this host can run the firecracker driver"
