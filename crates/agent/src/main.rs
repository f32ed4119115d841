//! `bazel-diff-agent`: the guest agent binary. Parses flags and runs [`agent::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use bazel_diff_agent::agent::{self, listen::ListenAddr, Config};
use clap::Parser;

/// Guest agent for bazel-diff-snap: serves line-delimited JSON (exec, files, clock, entropy)
/// over vsock. See the crate docs for the protocol.
#[derive(Debug, Parser)]
#[command(name = "bazel-diff-agent", version)]
struct Args {
    /// Where to listen: vsock:PORT (in a guest) or unix:PATH (tests). Repeatable.
    #[arg(long = "listen", value_name = "ADDR", default_value = "vsock:10789")]
    listen: Vec<ListenAddr>,

    /// Make set_time check permission and answer without changing the clock.
    #[arg(long)]
    dry_run_time: bool,

    /// Device that reseed feeds (a plain file is written to, for tests).
    #[arg(long, value_name = "PATH", default_value = "/dev/urandom")]
    random_device: PathBuf,

    /// Connections served at once; more are refused with a `busy` error.
    #[arg(long, value_name = "N", default_value_t = 32)]
    max_connections: usize,

    /// Log every connection and request to stderr.
    #[arg(short, long)]
    verbose: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = Config {
        listen: args.listen,
        dry_run_time: args.dry_run_time,
        random_device: args.random_device,
        max_connections: args.max_connections.max(1),
        verbose: args.verbose,
    };
    match agent::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bazel-diff-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
