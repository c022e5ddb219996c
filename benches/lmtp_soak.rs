//! Sustained LMTP load (issue 4, "Load"): `rebound serve` (the binary of this profile) on a free port with a
//! fresh SQLite file, and this process as the load generator: 8 clients send unique messages as fast as
//! the server acknowledges them, for a fixed time. Every 10 s it prints the interval's throughput and the
//! server's RSS, peak RSS (VmHWM) and open file descriptors from /proc, so growth over time (a leak) shows;
//! at the end throughput, p50/p99/max latency (MAIL FROM to the 250 after the data, pipelined as Postfix
//! does) and a check that the database holds exactly the acknowledged messages.
//!
//! Run: `nice -n 10 cargo bench --bench lmtp_soak` (REBOUND_SOAK_SECONDS, default 180;
//! REBOUND_SOAK_CLIENTS, default 8).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Client, Server, count_messages, sqlite_url};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A `kB` field of /proc/PID/status, in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Open file descriptors of the process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn message(c: u64, n: u64) -> Vec<u8> {
    format!(
        "From: MAILER-DAEMON@mx.example.net\r\nTo: bounces@example.com\r\nSubject: Undelivered mail {c}-{n}\r\n\
         Message-ID: <soak-{c}-{n}@mx.example.net>\r\n\r\n<user{c}x{n}@example.net>: host \
         mx.example.net[192.0.2.1] said: 550 5.1.1 <user{c}x{n}@example.net>: Recipient address rejected: \
         User unknown\r\n"
    )
    .into_bytes()
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

fn main() {
    let seconds = env_u64("REBOUND_SOAK_SECONDS", 180);
    let clients = env_u64("REBOUND_SOAK_CLIENTS", 8);
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let server = Server::launch(dir.path(), &url, "", "", "warn,rebound::serve=info");
    let pid = server.pid();
    let addr = server.addr;
    println!("lmtp_soak: {clients} clients for {seconds} s against pid {pid} on {addr} ({url})");

    let done = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (done, acked) = (done.clone(), acked.clone());
            std::thread::spawn(move || {
                let mut client = Client::ready(addr);
                let mut latencies = Vec::new();
                let mut n = 0;
                while !done.load(Ordering::Relaxed) {
                    let raw = message(c, n);
                    let start = Instant::now();
                    let replies = client.deliver_pipelined("", &["bounces@example.com"], &raw);
                    assert_eq!(replies[0].code, 250, "{replies:?}");
                    latencies.push(start.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    acked.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
                latencies
            })
        })
        .collect();

    let start = Instant::now();
    let (rss0, fds0) = (status_mib(pid, "VmRSS:"), open_fds(pid));
    println!("{:>6} {:>10} {:>9} {:>9} {:>5}", "t(s)", "msg/s", "RSS MiB", "HWM MiB", "fds");
    println!("{:>6} {:>10} {:>9.1} {:>9.1} {:>5}", 0, "-", rss0, status_mib(pid, "VmHWM:"), fds0);
    let mut last = (Instant::now(), 0u64);
    let mut samples = Vec::new();
    while start.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(10).min(Duration::from_secs(seconds).saturating_sub(start.elapsed())));
        let now = (Instant::now(), acked.load(Ordering::Relaxed));
        let rate = (now.1 - last.1) as f64 / now.0.duration_since(last.0).as_secs_f64();
        let (rss, hwm, fds) = (status_mib(pid, "VmRSS:"), status_mib(pid, "VmHWM:"), open_fds(pid));
        println!("{:>6.0} {:>10.0} {:>9.1} {:>9.1} {:>5}", start.elapsed().as_secs_f64(), rate, rss, hwm, fds);
        samples.push((rss, fds));
        last = now;
    }
    done.store(true, Ordering::Relaxed);
    let mut latencies: Vec<u32> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let total = latencies.len();
    let stored = count_messages(&url);
    println!(
        "lmtp_soak: {total} messages acknowledged in {elapsed:.0} s = {:.0} msg/s; latency p50 {:.2} ms, p99 \
         {:.2} ms, max {:.2} ms; peak RSS (VmHWM) {:.1} MiB; RSS {:.1} -> {:.1} MiB, fds {} -> {} (first 10 s sample -> end)",
        total as f64 / elapsed,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        status_mib(pid, "VmHWM:"),
        samples.first().map_or(rss0, |s| s.0),
        samples.last().map_or(rss0, |s| s.0),
        samples.first().map_or(fds0, |s| s.1),
        samples.last().map_or(fds0, |s| s.1),
    );
    assert_eq!(stored, total as i64, "rows in the database vs messages acknowledged");
    drop(server);
}
