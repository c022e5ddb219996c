//! LMTP ingest throughput, durable: `rebound serve` (the release binary) on a free port of 127.0.0.1 with a
//! fresh SQLite file, 8 concurrent LMTP clients each sending its share of the messages one transaction at a
//! time, waiting for the 250 (sent only after the commit) before the next. Prints messages per second
//! acknowledged, and in the same run the baseline with one transaction per message (`max_batch = 1`) and the
//! ratio. Then the same into Postgres when REBOUND_TEST_POSTGRES_URL is set, and `rebound ingest` over one
//! large mbox file.
//!
//! Messages: the shared bounce corpus (../shared/corpus/bounces/emails) when present, else this crate's
//! fixtures; each copy gets a unique `X-Bench-Seq` header so none is a duplicate.
//!
//! Run: `cargo bench --bench lmtp_ingest` (REBOUND_BENCH_MESSAGES=N to change the count, default 4000;
//! REBOUND_BENCH_CLIENTS=N, default 8).

#[path = "util/mod.rs"]
mod util;

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Client, Server, count_messages, sqlite_url};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Raw messages to send: the corpus files, or the fixtures when the corpus is absent.
fn source_messages() -> (Vec<Vec<u8>>, String) {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/bounces/emails");
    let (root, label) = if corpus.is_dir() {
        (corpus, "shared bounce corpus")
    } else {
        eprintln!("note: ../shared/corpus/bounces/emails is absent; using tests/fixtures/ingest");
        (common::fixtures(), "tests/fixtures/ingest")
    };
    let mut files = Vec::new();
    collect(&root, &mut files);
    files.sort();
    let messages: Vec<Vec<u8>> = files
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .filter(|m| !m.is_empty() && m.len() < 1024 * 1024)
        .collect();
    let label = format!("{label}, {} files", messages.len());
    (messages, label)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name() != Some("tmp".as_ref()) {
                collect(&path, out);
            }
        } else if path.extension().is_none_or(|e| e != "md") {
            out.push(path);
        }
    }
}

/// `n` unique messages built from the sources.
fn workload(sources: &[Vec<u8>], n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut m = format!("X-Bench-Seq: {i}\r\n").into_bytes();
            m.extend_from_slice(&sources[i % sources.len()]);
            m
        })
        .collect()
}

/// Push every message through `clients` LMTP connections; returns messages per second (all acknowledged).
fn push(server: &Server, messages: &[Vec<u8>], clients: usize) -> f64 {
    let addr = server.addr;
    let chunks: Vec<Vec<Vec<u8>>> = (0..clients)
        .map(|c| messages.iter().skip(c).step_by(clients).cloned().collect())
        .collect();
    let start = Instant::now();
    let threads: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            std::thread::spawn(move || {
                let mut client = Client::ready(addr);
                for message in &chunk {
                    let replies = client.deliver_pipelined("", &["bounces@example.com"], message);
                    assert_eq!(replies[0].code, 250, "{replies:?}");
                }
                client.command("QUIT");
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client failed");
    }
    messages.len() as f64 / start.elapsed().as_secs_f64()
}

/// One LMTP run against `url` with the given `[ingest]` lines; checks that every message is in the database.
fn lmtp_run(url: &str, ingest: &str, messages: &[Vec<u8>], clients: usize) -> (f64, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::launch(dir.path(), url, ingest, "", "rebound=info");
    let rate = push(&server, messages, clients);
    let cpu = cpu_seconds(server.pid());
    server.signal("TERM");
    let status = server.wait(Duration::from_secs(60)).expect("serve did not stop");
    assert!(status.success(), "{status:?}");
    assert_eq!(count_messages(url) as usize, messages.len(), "acknowledged = committed");
    // The writer's own account: batches, mean batch size, mean commit time.
    std::thread::sleep(Duration::from_millis(100));
    let log = server.log();
    let stats = log
        .lines()
        .find(|l| l.contains("database writer stopped"))
        .and_then(|l| l.find("batches=").map(|i| l[i..].to_string()))
        .unwrap_or_default();
    let cpu = cpu.map(|c| format!(" server_cpu_us_per_msg={:.0}", c * 1e6 / messages.len() as f64)).unwrap_or_default();
    (rate, format!("{stats}{cpu}"))
}

/// CPU time (user + system) a process has used so far, from /proc (Linux).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let hz = Command::new("getconf").arg("CLK_TCK").output().ok()?;
    let hz: f64 = String::from_utf8_lossy(&hz.stdout).trim().parse().ok()?;
    Some(ticks / hz)
}

fn report(backend: &str, n: usize, clients: usize, group: (f64, String), single: (f64, String)) {
    println!(
        "lmtp_ingest {backend:8} {clients} clients {n} messages  group commit (max_batch=256, commit_delay=2ms): {:>8.0} msg/s  [{}]",
        group.0, group.1
    );
    println!(
        "lmtp_ingest {backend:8} {clients} clients {n} messages  one transaction per message (max_batch=1):    {:>8.0} msg/s  [{}]",
        single.0, single.1
    );
    println!("lmtp_ingest {backend:8} group commit / per-message = {:.2}x", group.0 / single.0);
}

fn main() {
    let n = env_usize("REBOUND_BENCH_MESSAGES", 4000);
    let clients = env_usize("REBOUND_BENCH_CLIENTS", 8);
    let (sources, label) = source_messages();
    assert!(!sources.is_empty(), "no messages to send");
    let messages = workload(&sources, n);
    let bytes: usize = messages.iter().map(Vec::len).sum();
    println!("messages: {n} ({label}), {:.1} MiB, mean {} bytes", bytes as f64 / 1048576.0, bytes / n);

    println!("load average (1, 5, 15 min): {}", util::load_average());

    let group_cfg = "max_batch = 256\ncommit_delay = \"2ms\"";
    let single_cfg = "max_batch = 1\ncommit_delay = \"0ms\"";
    let dir = tempfile::tempdir().unwrap();
    for sub in ["g", "s", "m"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    let group = lmtp_run(&sqlite_url(&dir.path().join("g")), group_cfg, &messages, clients);
    let single = lmtp_run(&sqlite_url(&dir.path().join("s")), single_cfg, &messages, clients);
    report("sqlite", n, clients, group, single);

    if let (Some(g), Some(s)) = (common::postgres_schema("bench_group"), common::postgres_schema("bench_single")) {
        let group = lmtp_run(&g.url, group_cfg, &messages, clients);
        let single = lmtp_run(&s.url, single_cfg, &messages, clients);
        report("postgres", n, clients, group, single);
    }

    // `rebound ingest` over one mbox file with every message.
    let mbox = dir.path().join("bench.mbox");
    let mut text = Vec::with_capacity(bytes + n * 64);
    for m in &messages {
        text.extend_from_slice(b"From MAILER-DAEMON Mon Nov 30 10:00:00 2026\n");
        for line in m.split_inclusive(|&b| b == b'\n') {
            let quotes = line.iter().take_while(|&&b| b == b'>').count();
            if line[quotes..].starts_with(b"From ") {
                text.push(b'>');
            }
            text.extend_from_slice(line);
        }
        if !text.ends_with(b"\n") {
            text.push(b'\n');
        }
        text.push(b'\n');
    }
    std::fs::write(&mbox, &text).unwrap();
    let url = sqlite_url(&dir.path().join("m"));
    let start = Instant::now();
    let out = Command::new(common::bin()).args(["ingest", "--db", &url]).arg(&mbox).output().unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary = String::from_utf8_lossy(&out.stdout);
    println!(
        "ingest_mbox sqlite   {:.1} MiB mbox, {n} messages: {:>8.0} msg/s ({})",
        text.len() as f64 / 1048576.0,
        n as f64 / elapsed,
        summary.trim()
    );
}
