//! Measures loading a graph state file: `cargo run --release -p bazel-diff-hash --example
//! graph_state_load -- <state file>`.

use std::time::Instant;

use bazel_diff_hash::GraphState;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: graph_state_load <state file>")?;
    let mut best_read = f64::MAX;
    let mut best_decode = f64::MAX;
    let mut best_hashes = f64::MAX;
    for _ in 0..10 {
        let started = Instant::now();
        let bytes = std::fs::read(&path)?;
        let read = started.elapsed().as_secs_f64();
        let state = GraphState::decode(&bytes)?;
        let decoded = started.elapsed().as_secs_f64();
        let hashes = state.hashes();
        let all = started.elapsed().as_secs_f64();
        std::hint::black_box(hashes);
        best_read = best_read.min(read);
        best_decode = best_decode.min(decoded - read);
        best_hashes = best_hashes.min(all - decoded);
    }
    eprintln!(
        "{} targets: read {:.1} ms, verify+decode {:.1} ms, materialise hash list {:.1} ms (best of 10)",
        GraphState::read_from(std::path::Path::new(&path))?.target_count(),
        best_read * 1e3,
        best_decode * 1e3,
        best_hashes * 1e3
    );
    Ok(())
}
