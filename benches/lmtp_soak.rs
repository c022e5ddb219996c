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

use std::time::{Duration, Instant};

use common::load::{Conn, Soak, bounce, env_u64, micros, percentile_ms, soak, status_mib};
use common::{Server, count_messages, dot_stuff, sqlite_url};

fn main() {
    let seconds = env_u64("REBOUND_SOAK_SECONDS", 180);
    let clients = env_u64("REBOUND_SOAK_CLIENTS", 8) as usize;
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let server = Server::launch(dir.path(), &url, "", "", "warn,rebound::serve=info");
    let pid = server.pid();
    let addr = server.addr;
    println!("lmtp_soak: {clients} clients for {seconds} s against pid {pid} on {addr} ({url})");

    let connections: Vec<_> = (0..clients)
        .map(|c| {
            let mut conn = Conn::open(addr, Duration::from_secs(30)).expect("LMTP connection");
            move |n: usize| {
                let data = dot_stuff(&bounce("soak", c, n));
                let start = Instant::now();
                let code = conn.deliver("", &data, || {}).expect("LMTP transaction");
                assert_eq!(code, 250, "message {c}-{n}");
                micros(start)
            }
        })
        .collect();
    let Soak { samples, latencies, elapsed } = soak(pid, seconds, connections);
    let total = latencies.len();
    let stored = count_messages(&url);
    // The first sample after warm-up (10 s) against the last one.
    let (first, last) = (samples.get(1).unwrap_or(&samples[0]), samples.last().unwrap());
    println!(
        "lmtp_soak: {total} messages acknowledged in {elapsed:.0} s = {:.0} msg/s; latency p50 {:.2} ms, p99 \
         {:.2} ms, max {:.2} ms; peak RSS (VmHWM) {:.1} MiB; RSS {:.1} -> {:.1} MiB, fds {} -> {} (first 10 s sample -> end)",
        total as f64 / elapsed,
        percentile_ms(&latencies, 0.50),
        percentile_ms(&latencies, 0.99),
        percentile_ms(&latencies, 1.0),
        status_mib(pid, "VmHWM:"),
        first.rss,
        last.rss,
        first.fds,
        last.fds,
    );
    assert_eq!(stored, total as i64, "rows in the database vs messages acknowledged");
    drop(server);
}
