//! `bazel-diff`: a thin command line over the hashing, diffing and fingerprint libraries.

mod args;
mod exit;
mod features;
mod fingerprint;
mod generate;
mod impacted;
mod incremental;
mod output;
mod progress;
mod workers;

use std::process::ExitCode;

// Hashing allocates many small strings on several threads at once; glibc's arena locks
// showed up as the top cost in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` of `mimalloc.h` (v2 and v3), which the binding does not name;
/// -1 disables purging.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

use clap::Parser;

use crate::args::{normalize_args, Cli, Command};

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "error",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BAZEL_DIFF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .init();
}

fn init_thread_pool() {
    let _ = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("hash-worker-{i}"))
        .start_handler(|_| workers::set_current_thread(workers::Priority::YieldToBazel))
        .build_global();
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(normalize_args(std::env::args_os())) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors; everything else is a usage error (2).
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE as u8 } else { 0 });
        }
    };
    init_logging(cli.verbose);
    // Transparent huge pages make every first touch of allocator memory zero 2 MiB; we
    // touch a few hundred MiB once, in small pieces, while Bazel competes for the CPU.
    // SAFETY: prctl with integer arguments only affects this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    // mimalloc returns freed pages to the OS (madvise) and purges every arena at exit; in a
    // run this short both are pure cost: refaults while hashing and ~40 ms of madvise after
    // the output is written (150k targets). The process exit frees everything anyway.
    // SAFETY: setting an option takes effect for later allocations; no memory is touched.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
    init_thread_pool();
    let result = match &cli.command {
        Command::GenerateHashes(args) => generate::run(args),
        Command::GetImpactedTargets(args) => impacted::run(args),
        Command::Fingerprint(args) => fingerprint::run(args),
        Command::Warmup(args) => fingerprint::warmup(args),
    };
    match result {
        Ok(()) => ExitCode::from(exit::SUCCESS as u8),
        Err(error) => {
            eprintln!("[Error] {}", exit::render(&error));
            ExitCode::from(exit::code_for(&error) as u8)
        }
    }
}
