//! Classifier benchmark (issue 6 targets), in one run:
//! - model load time (target ≤ 200 ms);
//! - rebound's read + parse + classify (model included) over every message of ../shared/corpus/bounces on
//!   one thread in this process, messages/s (the first pass on its own, then the following passes);
//! - the real command, `rebound classify --format jsonl CORPUS > /dev/null` (the release binary: process
//!   start, model load, directory walk and JSON output included), with `--jobs 1` and with one thread per
//!   core;
//! - Debian's Sisimai (libsisimai-perl, benches/sisimai_classify.pl) over the same files in the same run,
//!   and each rebound figure's ratio to it (target ≥ 25×): REPS passes in one process (perl start excluded), and,
//!   like for like with the command, one pass a process (interpreter start and lazy module loading included);
//! - inference latency per recipient on one core, p50/p99 (target p99 ≤ 1 ms).
//!
//! Run: `nice -n 10 cargo bench --bench classify` (needs ../shared and `apt-get install libsisimai-perl`;
//! skips with a printed reason when either is missing). `REBOUND_BENCH_REPS` sets the passes (default 5).
//! The machine is shared: the load average is printed, and the ratios are what to compare across runs.

#[path = "util/mod.rs"]
mod util;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use rebound::classify::{self, Model, Signals};
use rebound::parse;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = root.join("../shared/corpus/bounces/emails");
    let model_dir = root.join("models");
    if !corpus.is_dir() {
        println!("classify bench skipped: {} is absent", corpus.display());
        return;
    }
    let reps: usize = std::env::var("REBOUND_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);

    // Model load.
    let mut loads = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        match Model::load(&model_dir) {
            Ok(_) => loads.push(t.elapsed().as_secs_f64() * 1e3),
            Err(e) => {
                println!("classify bench skipped: {e}");
                return;
            }
        }
    }
    loads.sort_by(f64::total_cmp);
    println!("model load: first {:.1} ms, p50 {:.1} ms, max {:.1} ms (target <= 200 ms)", loads[0], percentile(&loads, 0.5), loads[loads.len() - 1]);
    if let Err(e) = classify::init(&model_dir, classify::DEFAULT_MIN_CONFIDENCE) {
        println!("classify bench skipped: {e}");
        return;
    }

    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(&corpus)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "eml"))
        .map(|e| e.into_path())
        .collect();
    files.sort();

    println!("load average (1, 5, 15 min): {}", util::load_average());
    // rebound in this process, one thread: read, parse, classify every file; the first pass on its own (cold
    // caches: nothing of rebound's is kept between passes, but the CPU caches and branch predictors warm up),
    // then `reps` more.
    let pass = || {
        let mut recipients = 0usize;
        for f in &files {
            let Ok(raw) = std::fs::read(f) else { continue };
            let parsed = parse::parse(&raw);
            recipients += classify::classify_all(&parsed).len();
        }
        recipients
    };
    let started = Instant::now();
    let recipients = pass();
    let first = files.len() as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(pass());
    }
    let secs = started.elapsed().as_secs_f64();
    let ours = (files.len() * reps) as f64 / secs;
    println!(
        "rebound in-process, 1 thread: first pass {first:.0} msg/s; next {reps} passes {} messages ({} recipients \
         each pass) in {secs:.3} s = {ours:.0} msg/s",
        files.len() * reps,
        recipients
    );

    // The command, as a user runs it.
    let command = |jobs: Option<usize>| -> Option<f64> {
        let started = Instant::now();
        for _ in 0..reps {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_rebound"));
            cmd.args(["classify", "--format", "jsonl", "--model"]).arg(&model_dir);
            if let Some(j) = jobs {
                cmd.arg("--jobs").arg(j.to_string());
            }
            let status = cmd.arg(&corpus).stdout(Stdio::null()).stderr(Stdio::null()).status();
            match status {
                Ok(s) if s.success() => {}
                other => {
                    println!("rebound classify failed: {other:?}");
                    return None;
                }
            }
        }
        Some((files.len() * reps) as f64 / started.elapsed().as_secs_f64())
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let command_1 = command(Some(1));
    let command_n = command(None);

    // Sisimai over the same files: `passes` passes in one perl process.
    let script = root.join("benches/sisimai_classify.pl");
    let sisimai = |passes: usize| {
        Command::new("perl")
            .arg(&script)
            .arg(passes.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .and_then(|mut child| {
                if let Some(mut stdin) = child.stdin.take() {
                    for f in &files {
                        writeln!(stdin, "{}", f.display())?;
                    }
                }
                child.wait_with_output()
            })
    };
    let theirs = match sisimai(reps) {
        Ok(out) if out.status.success() => {
            let line = String::from_utf8_lossy(&out.stdout);
            let fields: Vec<f64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            if let [m, r, s] = fields[..] {
                println!("sisimai: {m} messages, {r} recipients in {s:.3} s = {:.0} msg/s", m / s);
                Some(m / s)
            } else {
                println!("sisimai: unexpected output {line:?}");
                None
            }
        }
        Ok(out) => {
            println!("sisimai skipped: perl exited {} (apt-get install libsisimai-perl)", out.status);
            None
        }
        Err(e) => {
            println!("sisimai skipped: cannot run perl: {e}");
            None
        }
    };
    let ratio = |rate: f64| theirs.map_or(String::new(), |t| format!(" = {:.1}x sisimai (target >= 25x)", rate / t));
    println!("rebound in-process, 1 thread, first pass: {first:.0} msg/s{}", ratio(first));
    println!("rebound in-process, 1 thread: {ours:.0} msg/s{}", ratio(ours));
    if let Some(rate) = command_1 {
        println!("rebound classify --jobs 1 (process start and model load included): {rate:.0} msg/s{}", ratio(rate));
    }
    if let Some(rate) = command_n {
        println!("rebound classify, {cores} threads (process start and model load included): {rate:.0} msg/s{}", ratio(rate));
    }
    // Like for like with the command: Sisimai as a command too, one pass a process, so that its interpreter
    // start and the modules it loads on first use count as rebound's process start and model load do.
    if theirs.is_some() {
        let started = Instant::now();
        let runs: Result<Vec<_>, _> = (0..reps).map(|_| sisimai(1)).collect();
        let secs = started.elapsed().as_secs_f64();
        if runs.is_ok_and(|outs| outs.iter().all(|o| o.status.success())) {
            let cold = (files.len() * reps) as f64 / secs;
            println!("sisimai as a command, one pass a process (perl start and module loading included): {cold:.0} msg/s");
            if let Some(rate) = command_1 {
                println!("rebound classify --jobs 1 against sisimai as a command: {:.1}x (target >= 25x)", rate / cold);
            }
        }
    }
    println!("load average (1, 5, 15 min): {}", util::load_average());

    // Inference latency per recipient, on this one thread.
    let Some((model, min_confidence)) = classify::installed() else { return };
    let mut inputs: Vec<(String, Signals)> = Vec::new();
    for f in &files {
        let Ok(raw) = std::fs::read(f) else { continue };
        let parsed = parse::parse(&raw);
        for r in &parsed.recipients {
            inputs.push((r.diagnostic.clone().unwrap_or_default(), Signals::of_recipient(parsed.kind, r)));
        }
    }
    let mut lat = Vec::with_capacity(inputs.len() * reps);
    let mut slowest = (0.0f64, 0usize);
    for _ in 0..reps {
        for (text, signals) in &inputs {
            let t = Instant::now();
            let c = model.classify(text, signals, min_confidence);
            let us = t.elapsed().as_secs_f64() * 1e6;
            if us > slowest.0 {
                slowest = (us, text.chars().count());
            }
            lat.push(us);
            std::hint::black_box(c);
        }
    }
    println!("slowest call: {:.1} us on a text of {} characters", slowest.0, slowest.1);
    lat.sort_by(f64::total_cmp);
    println!(
        "inference per recipient ({} calls): p50 {:.1} us, p99 {:.1} us, max {:.1} us (target p99 <= 1000 us)",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
}
