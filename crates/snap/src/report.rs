//! The `--json` report of a consume: what was chosen, why, and how long each phase took.

use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// `snapshot`, `no-snapshot`, `cold-fallback` or `error`.
    pub outcome: String,
    pub exit_code: i32,
    pub target_sha: Option<String>,
    pub base_sha: Option<String>,
    /// `explicit` (--base-sha) or `entry` (the resolved entry's base, as upstream).
    pub base_source: Option<String>,
    pub driver: String,
    pub fingerprint: Option<String>,
    pub store_key: Option<String>,
    pub fingerprint_components: Vec<(String, String)>,
    pub entry: Option<Value>,
    pub distance: Option<u64>,
    pub skipped: Vec<crate::resolve::Skipped>,
    pub fallback_reason: Option<String>,
    pub error: Option<String>,
    pub driver_notes: Option<Value>,
    /// Phase name to seconds, in order.
    pub phases: Vec<(String, f64)>,
}

/// Times phases into a report.
pub struct Phases {
    last: Instant,
}

impl Phases {
    pub fn start() -> Self {
        Phases {
            last: Instant::now(),
        }
    }

    pub fn mark(&mut self, report: &mut Report, name: &str) {
        let now = Instant::now();
        let secs = (now - self.last).as_secs_f64();
        report
            .phases
            .push((name.to_owned(), (secs * 1e4).round() / 1e4));
        self.last = now;
    }
}
