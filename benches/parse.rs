//! Parse throughput on the shared corpus: `rebound::parse::parse` on every file of
//! ../shared/corpus/{bounces/emails,arf}, N rounds, against mail-parser alone
//! (`MessageParser::default().parse`) on the same files as the baseline.
//!
//! Run: `cargo bench --bench parse` (rounds: `REBOUND_BENCH_ROUNDS`, default 20, split over 5 trials).

#[path = "util/mod.rs"]
mod util;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mail_parser::MessageParser;

fn collect(dir: &Path, out: &mut Vec<Vec<u8>>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "eml")
            && let Ok(raw) = std::fs::read(&path)
        {
            out.push(raw);
        }
    }
}

/// Seconds for `rounds` passes of `f` over all files.
fn time(files: &[Vec<u8>], rounds: usize, f: &mut impl FnMut(&[u8]) -> usize) -> Duration {
    let mut sink = 0usize;
    let start = Instant::now();
    for _ in 0..rounds {
        for raw in files {
            sink = sink.wrapping_add(f(raw));
        }
    }
    black_box(sink);
    start.elapsed()
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    let mut files = Vec::new();
    collect(&root.join("bounces/emails"), &mut files);
    collect(&root.join("arf"), &mut files);
    if files.is_empty() {
        println!("skipping: no corpus files under {}", root.display());
        return;
    }
    let rounds: usize = std::env::var("REBOUND_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let bytes: usize = files.iter().map(Vec::len).sum();
    println!(
        "corpus: {} files, {:.1} MiB; {rounds} rounds in 5 alternating trials, best trial reported",
        files.len(),
        bytes as f64 / 1048576.0
    );

    println!("load average (1, 5, 15 min): {}", util::load_average());

    let mut ours = |raw: &[u8]| rebound::parse::parse(raw).recipients.len();
    let mut baseline = |raw: &[u8]| MessageParser::default().parse(raw).map(|m| m.parts.len()).unwrap_or(0);
    // Warm-up, then trials alternating the two so that a busy machine slows both alike; the best trial of
    // each is reported.
    time(&files, 1, &mut ours);
    time(&files, 1, &mut baseline);
    let trials = 5;
    let per_trial = rounds.div_ceil(trials).max(1);
    let (mut best_ours, mut best_base) = (Duration::MAX, Duration::MAX);
    for _ in 0..trials {
        best_ours = best_ours.min(time(&files, per_trial, &mut ours));
        best_base = best_base.min(time(&files, per_trial, &mut baseline));
    }
    let n = files.len() * per_trial;
    let ours_rate = n as f64 / best_ours.as_secs_f64();
    let base_rate = n as f64 / best_base.as_secs_f64();
    println!("rebound parse:      {ours_rate:>10.0} msg/s ({:.1} µs/msg)", 1e6 / ours_rate);
    println!("mail-parser alone:  {base_rate:>10.0} msg/s ({:.1} µs/msg)", 1e6 / base_rate);
    println!("ratio rebound/mail-parser: {:.2} (rebound does the MIME parse plus the report reading)", ours_rate / base_rate);
}
