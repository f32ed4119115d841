//! `bazel-diff-snap`: record a warm Bazel server per base revision, consume it at PR time.
//!
//! Exit codes (a contract CI scripts test, kept from upstream where it had one):
//! 0 = done (consume: impacted set written); 2 = consume found no usable snapshot or could
//! not use it, nothing written: run the cold path; 1 = any real error, including bad flags.

mod admin;
mod consume;
mod context;
mod driver;
mod driver_fc;
mod driver_fc_jail;
mod driver_fc_mem;
mod failpoint;
mod git;
mod record;
mod report;
mod resolve;
mod shared;
mod tool;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub const EXIT_OK: u8 = 0;
pub const EXIT_ERROR: u8 = 1;
pub const EXIT_NO_SNAPSHOT: u8 = 2;

/// The version recorded in entries.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Parser, Debug)]
#[command(
    name = "bazel-diff-snap",
    version,
    about = "Record warm Bazel servers per base revision; consume them for fast impacted targets.",
    long_about = "Record warm Bazel servers per base revision; consume them for fast impacted targets.\n\n\
        Exit codes: 0 done (consume: impacted targets written); 2 no usable snapshot \
        (nothing written: run the cold path, or pass --fallback cold); 1 any other error, \
        including bad flags."
)]
struct Cli {
    /// Log decisions to stderr (-vv for debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Warm Bazel at a base commit and publish a store entry for it.
    Record(RecordArgs),
    /// Impacted targets for a target commit from the nearest usable snapshot.
    Consume(ConsumeArgs),
    /// Print which entry consume would use, as JSON, without running anything.
    Resolve(ResolveArgs),
    /// List the store's entries.
    List(ListArgs),
    /// Check every entry's digests; --fix removes corrupt entries.
    Verify(VerifyArgs),
    /// Remove old entries by count, age or total size (entries in use are kept).
    Gc(GcArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum DriverKind {
    Local,
    Firecracker,
}

/// Flags shared by record, consume and resolve (upstream's `registerCommon`).
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// The git repository (a Bazel workspace). Never modified: work happens in a worktree
    /// inside the store.
    #[arg(long, value_name = "DIR")]
    pub workspace: PathBuf,
    /// The snapshot store: a directory, or an object store URL (`s3://bucket/prefix`,
    /// credentials and endpoint from the AWS_* environment variables).
    #[arg(long, value_name = "DIR|URL")]
    pub store: PathBuf,
    /// With an object store: the local cache (chunks and materialized entries, plus the
    /// worktree and Bazel output roots). Default: $BAZEL_DIFF_SNAP_CACHE, else
    /// ~/.cache/bazel-diff-snap.
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// With an object store: the chunk cache's size limit (default 20GiB).
    #[arg(long = "cache-max-bytes", value_name = "SIZE")]
    pub cache_max_bytes: Option<String>,
    /// Bazel binary.
    #[arg(long, default_value = "bazel", value_name = "PATH")]
    pub bazel: PathBuf,
    /// bazel-diff binary (default: the one next to this program, else on PATH).
    #[arg(long = "bazel-diff", value_name = "PATH")]
    pub bazel_diff: Option<PathBuf>,
    /// Where the warm server lives.
    #[arg(long, value_enum, default_value_t = DriverKind::Local)]
    pub driver: DriverKind,
    /// Extra bazel-diff flag for fingerprint, warmup and generate-hashes (repeatable), e.g.
    /// `--flag=--excludeExternalTargets`.
    #[arg(long = "flag", value_name = "FLAG", allow_hyphen_values = true)]
    pub flags: Vec<String>,
    #[command(flatten)]
    pub fc: FirecrackerFlags,
}

/// The firecracker driver's flags (upstream's names where it had them).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Firecracker driver")]
pub struct FirecrackerFlags {
    /// The firecracker binary.
    #[arg(
        long = "firecracker-bin",
        default_value = "firecracker",
        value_name = "PATH"
    )]
    pub firecracker_bin: PathBuf,
    /// Guest kernel (vmlinux).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Base root filesystem image (default: rootfs.base.ext4 beside --kernel). Never
    /// written: every VM gets a copy-on-write copy.
    #[arg(long, value_name = "PATH")]
    pub rootfs: Option<PathBuf>,
    /// Run every VM through this jailer binary, in its own chroot under --chroot-base
    /// (needs --jailer-uid and --jailer-gid; the chroot base is best on the store's
    /// filesystem, so entry files are hard-linked rather than copied in).
    #[arg(long, value_name = "PATH", requires_all = ["jailer_uid", "jailer_gid"])]
    pub jailer: Option<PathBuf>,
    /// The uid the jailer runs Firecracker as.
    #[arg(long = "jailer-uid", value_name = "UID")]
    pub jailer_uid: Option<u32>,
    /// The gid the jailer runs Firecracker as.
    #[arg(long = "jailer-gid", value_name = "GID")]
    pub jailer_gid: Option<u32>,
    /// The jailer's --chroot-base-dir.
    #[arg(
        long = "chroot-base",
        default_value = "/srv/jailer",
        value_name = "DIR"
    )]
    pub chroot_base: PathBuf,
    /// vCPUs of the VM (part of the key).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub vcpus: u32,
    /// Guest memory in MiB (part of the key).
    #[arg(long = "mem-mib", default_value_t = 4096, value_name = "MIB")]
    pub mem_mib: u64,
    /// Path of the repository inside the guest image (default: the --workspace path).
    #[arg(long = "guest-workspace", value_name = "PATH")]
    pub guest_workspace: Option<String>,
    /// Bazel inside the guest.
    #[arg(long = "guest-bazel", default_value = "bazel", value_name = "PATH")]
    pub guest_bazel: String,
    /// bazel-diff inside the guest.
    #[arg(
        long = "guest-bazel-diff",
        default_value = "bazel-diff",
        value_name = "PATH"
    )]
    pub guest_bazel_diff: String,
    /// vsock port of the guest agent.
    #[arg(long = "agent-port", default_value_t = 10789, value_name = "PORT")]
    pub agent_port: u32,
    /// How a restore gets guest memory.
    #[arg(long = "memory-backend", value_enum, default_value_t = driver_fc::MemoryBackend::File)]
    pub memory_backend: driver_fc::MemoryBackend,
    /// record: start from the entry of this base commit (`auto`: the nearest recorded
    /// ancestor) instead of booting, and store only the memory pages dirtied since (a Diff
    /// snapshot naming that entry as its parent). Ignored by consume.
    #[arg(long = "diff-from", value_name = "REV|auto")]
    pub diff_from: Option<String>,
    /// record: a Diff that would make a chain of more than N diffs is recorded as a Full
    /// snapshot instead (still from the restored VM).
    #[arg(long = "max-diff-chain", default_value_t = 4, value_name = "N")]
    pub max_diff_chain: u32,
    /// Upstream ssh/TAP flags: accepted so upstream CI scripts parse, ignored (the guest is
    /// reached over vsock; no NIC is used).
    #[arg(long = "guest-addr", hide = true, value_name = "X")]
    pub guest_addr: Option<String>,
    #[arg(long = "guest-key", hide = true, value_name = "X")]
    pub guest_key: Option<String>,
    #[arg(long = "tap-device", hide = true, value_name = "X")]
    pub tap_device: Option<String>,
    #[arg(long = "guest-ip", hide = true, value_name = "X")]
    pub guest_ip: Option<String>,
    #[arg(long = "host-ip", hide = true, value_name = "X")]
    pub host_ip: Option<String>,
    #[arg(long, hide = true, value_name = "X")]
    pub netmask: Option<String>,
    #[arg(long = "guest-mac", hide = true, value_name = "X")]
    pub guest_mac: Option<String>,
    #[arg(long, hide = true, value_name = "X")]
    pub socket: Option<String>,
    #[arg(long = "guest-snap-dir", hide = true, value_name = "X")]
    pub guest_snap_dir: Option<String>,
}

impl FirecrackerFlags {
    /// Names of the upstream flags given that this implementation ignores.
    pub fn ignored(&self) -> Vec<&'static str> {
        [
            ("--guest-addr", self.guest_addr.is_some()),
            ("--guest-key", self.guest_key.is_some()),
            ("--tap-device", self.tap_device.is_some()),
            ("--guest-ip", self.guest_ip.is_some()),
            ("--host-ip", self.host_ip.is_some()),
            ("--netmask", self.netmask.is_some()),
            ("--guest-mac", self.guest_mac.is_some()),
            ("--socket", self.socket.is_some()),
            ("--guest-snap-dir", self.guest_snap_dir.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect()
    }
}

#[derive(Args, Debug)]
pub struct RecordArgs {
    #[command(flatten)]
    pub common: Common,
    /// The base commit to snapshot (any revision git can resolve; stored by full sha).
    #[arg(long = "base-sha", value_name = "REV")]
    pub base_sha: String,
}

#[derive(Args, Debug, Clone)]
pub struct Selection {
    /// The commit to compute impacted targets for.
    #[arg(long = "target-sha", value_name = "REV")]
    pub target_sha: String,
    /// The diff base. Without it the chosen entry's base is used (upstream behaviour) and
    /// the report says so; with it the answer depends only on (base, target).
    #[arg(long = "base-sha", value_name = "REV")]
    pub base_sha: Option<String>,
    /// Ignore entries more than this many commits behind the base.
    #[arg(long = "max-distance", default_value_t = 1000, value_name = "COMMITS")]
    pub max_distance: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Fallback {
    /// Exit 2 so the caller runs its cold path.
    None,
    /// Run the cold path here (needs --base-sha) and say so on stderr.
    Cold,
}

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub selection: Selection,
    /// Where to write the impacted targets (as get-impacted-targets does).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Also write a JSON report: chosen entry, distance, key components, phase timings,
    /// fallback reason.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// What to do without a usable snapshot.
    #[arg(long, value_enum, default_value_t = Fallback::None)]
    pub fallback: Fallback,
    /// Extra flag for get-impacted-targets (repeatable), e.g. `--impacted-flag=-tt=Rule`.
    #[arg(
        long = "impacted-flag",
        value_name = "FLAG",
        allow_hyphen_values = true
    )]
    pub impacted_flags: Vec<String>,
    /// Always run the query on the warm server, even when only file contents changed since
    /// the entry's base (by default those are hashed from the stored graph, without Bazel).
    #[arg(long = "no-incremental")]
    pub no_incremental: bool,
    /// When the target is hashed incrementally, also hash it with the full query and fail
    /// (exit 1, naming the first differing target) unless both agree: the canary for
    /// trusting the incremental paths on a repository.
    #[arg(long)]
    pub verify: bool,
}

#[derive(Args, Debug)]
pub struct ResolveArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub selection: Selection,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// A store directory or object store URL.
    #[arg(long, value_name = "DIR|URL")]
    pub store: PathBuf,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// A store directory or object store URL.
    #[arg(long, value_name = "DIR|URL")]
    pub store: PathBuf,
    /// Remove the corrupt entries found.
    #[arg(long)]
    pub fix: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct GcArgs {
    /// A store directory or object store URL.
    #[arg(long, value_name = "DIR|URL")]
    pub store: PathBuf,
    /// Object stores: unreferenced chunks younger than this are kept (default 24h; shorter
    /// is safe only while no record is running).
    #[arg(long, value_name = "DURATION", value_parser = bazel_diff_store::parse_duration)]
    pub grace: Option<std::time::Duration>,
    /// Keep the newest N entries of each fingerprint.
    #[arg(long = "keep-per-fingerprint", value_name = "N")]
    pub keep_per_fingerprint: Option<usize>,
    /// Remove entries older than this (e.g. 7d, 12h, 1d12h).
    #[arg(long = "max-age", value_name = "DURATION", value_parser = bazel_diff_store::parse_duration)]
    pub max_age: Option<std::time::Duration>,
    /// Remove oldest entries until the store is at most this big (e.g. 50GB).
    #[arg(long = "max-bytes", value_name = "SIZE", value_parser = bazel_diff_store::parse_size)]
    pub max_bytes: Option<u64>,
    /// Print what would be removed without removing it.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
}

/// Go's flag package (upstream) accepts `-workspace` as well as `--workspace`.
fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    const LONG: [&str; 43] = [
        "workspace",
        "store",
        "bazel",
        "bazel-diff",
        "driver",
        "flag",
        "base-sha",
        "target-sha",
        "out",
        "json",
        "max-distance",
        "fallback",
        "fix",
        "dry-run",
        "impacted-flag",
        "keep-per-fingerprint",
        "max-age",
        "max-bytes",
        "firecracker-bin",
        "kernel",
        "rootfs",
        "jailer",
        "jailer-uid",
        "jailer-gid",
        "chroot-base",
        "vcpus",
        "mem-mib",
        "guest-workspace",
        "guest-bazel",
        "guest-bazel-diff",
        "agent-port",
        "memory-backend",
        "diff-from",
        "max-diff-chain",
        "guest-addr",
        "guest-key",
        "tap-device",
        "guest-ip",
        "host-ip",
        "netmask",
        "guest-mac",
        "socket",
        "guest-snap-dir",
    ];
    // The shared store's flags (issue 7).
    const SHARED_STORE_FLAGS: [&str; 3] = ["cache", "cache-max-bytes", "grace"];
    args.into_iter()
        .map(|arg| {
            let text = arg.to_string_lossy();
            let name = text.strip_prefix('-').filter(|rest| !rest.starts_with('-'));
            let known = |flag: &str| LONG.contains(&flag) || SHARED_STORE_FLAGS.contains(&flag);
            match name {
                Some(rest) if known(rest.split('=').next().unwrap_or(rest)) => {
                    OsString::from(format!("-{text}"))
                }
                _ => arg,
            }
        })
        .collect()
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BAZEL_DIFF_SNAP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(normalize_args(std::env::args_os())) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Help and version are not errors; bad flags are exit 1, never 2 (which means
            // "fall back to cold" to CI scripts: upstream finding F10).
            return ExitCode::from(if e.use_stderr() { EXIT_ERROR } else { EXIT_OK });
        }
    };
    init_logging(cli.verbose);
    let code = match cli.command {
        Command::Record(args) => report_error(record::run(&args)),
        Command::Consume(args) => consume::run(&args),
        Command::Resolve(args) => report_error(consume::resolve_only(&args)),
        Command::List(args) => report_error(admin::list(&args)),
        Command::Verify(args) => admin::verify(&args),
        Command::Gc(args) => report_error(admin::gc(&args)),
    };
    ExitCode::from(code)
}

fn report_error(result: anyhow::Result<()>) -> u8 {
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("bazel-diff-snap: error: {e:#}");
            EXIT_ERROR
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_single_dash_flags_are_accepted() {
        let args: Vec<OsString> = ["x", "-workspace", "/w", "-store=/s", "-v", "--flag", "-k"]
            .iter()
            .map(OsString::from)
            .collect();
        let got: Vec<String> = normalize_args(args)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            got,
            ["x", "--workspace", "/w", "--store=/s", "-v", "--flag", "-k"]
        );
    }
}
