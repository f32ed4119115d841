//! Times the get-impacted-targets pipeline on synthetic hashes files.
//!
//! `cargo run --release -p bazel-diff-impact --example bench_impact [entries]` (default
//! 150000 targets, 5% of them changed). Prints the time of each step.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use bazel_diff_format::{write_impacted_labels, HashFile, Hashes, TargetHash, TargetType, TypeTag};
use bazel_diff_impact::{impacted_targets, simple_diff, OutputFilter};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let entries: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 150_000,
    };
    let (from, to) = synthetic(entries)?;
    let mut report = io::stdout().lock();

    let mut bytes = Vec::new();
    let (written, write_time) = timed(|| from.write(&mut bytes));
    written?;
    writeln!(
        report,
        "targets: {entries}, hashes file: {:.1} MB",
        bytes.len() as f64 / 1e6
    )?;
    writeln!(report, "write hashes file (to memory): {}", ms(write_time))?;

    let dir = tempfile::tempdir()?;
    let (from_path, to_path) = (dir.path().join("from.json"), dir.path().join("to.json"));
    std::fs::write(&from_path, &bytes)?;
    to.write(std::fs::File::create(&to_path)?)?;

    let (from_read, read_time) = timed(|| HashFile::read(&from_path));
    let from_read = from_read?;
    writeln!(report, "read + parse hashes file: {}", ms(read_time))?;
    let to_read = HashFile::read(&to_path)?;
    if from_read != from || to_read != to {
        return Err("hashes file did not round-trip".into());
    }

    let (diff, diff_time) = timed(|| simple_diff(&from_read.hashes, &to_read.hashes).len());
    writeln!(
        report,
        "simple diff, same label order: {} ({diff} impacted)",
        ms(diff_time)
    )?;

    // Files written by different tools list labels in unrelated orders.
    let mut reversed: Vec<(&str, TargetHash)> =
        to_read.hashes.iter().map(|(l, h)| (l, h.clone())).collect();
    reversed.reverse();
    let reversed: Hashes = reversed.into_iter().collect();
    let (diff, diff_time) = timed(|| simple_diff(&from_read.hashes, &reversed).len());
    writeln!(
        report,
        "simple diff, unrelated label order: {} ({diff} impacted)",
        ms(diff_time)
    )?;

    let no_query = |_: &[String]| -> Result<Vec<String>, String> { Err("unused".into()) };
    let filter = OutputFilter {
        target_types: Some(vec![TargetType::Rule, TargetType::SourceFile]),
        exclude_external: true,
    };
    let (labels, all_time) = timed(|| impacted_targets(&from_read, &to_read, &no_query, &filter));
    let labels = labels?;
    writeln!(
        report,
        "impacted targets (diff + -tt filter + order): {} ({} reported)",
        ms(all_time),
        labels.len()
    )?;

    let nothing = HashFile::default();
    let (all, all_time) =
        timed(|| impacted_targets(&nothing, &to_read, &no_query, &OutputFilter::default()));
    let all = all?;
    writeln!(
        report,
        "impacted targets, all {} new: {}",
        all.len(),
        ms(all_time)
    )?;

    let mut sink = Vec::new();
    let (written, out_time) = timed(|| write_impacted_labels(&mut sink, &all));
    written?;
    writeln!(
        report,
        "write {} impacted labels: {}",
        all.len(),
        ms(out_time)
    )?;
    Ok(())
}

/// Two revisions of a workspace-like label set: mixed types, 5% of targets changed.
fn synthetic(entries: usize) -> Result<(HashFile, HashFile), Box<dyn std::error::Error>> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut hex = move || {
        let mut digest = String::with_capacity(64);
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            digest.push_str(&format!("{state:016x}"));
        }
        digest
    };
    let types = [
        TargetType::Rule,
        TargetType::SourceFile,
        TargetType::GeneratedFile,
    ];
    let mut from = Hashes::with_capacity(entries);
    let mut to = Hashes::with_capacity(entries);
    for i in 0..entries {
        let label = format!("//services/team{}/component{}:target_{i}", i % 97, i / 500);
        let tag = Some(TypeTag::from(types[i % 3]));
        let (overall, direct) = (hex(), hex());
        from.insert(&label, TargetHash::new(tag.clone(), &overall, &direct)?);
        let overall = if i % 20 == 0 { hex() } else { overall };
        to.insert(&label, TargetHash::new(tag, &overall, &direct)?);
    }
    let file = |hashes| HashFile {
        hashes,
        ..HashFile::default()
    };
    Ok((file(from), file(to)))
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let value = f();
    (value, start.elapsed())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}
