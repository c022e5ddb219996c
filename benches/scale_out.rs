//! LMTP ingest into one Postgres from 1 and from 3 `rebound serve` processes (issue 4 item 4), in the same
//! run: each run gets a fresh schema of REBOUND_TEST_POSTGRES_URL, the same unique messages, and the same
//! LMTP clients (each waits for its 250, sent only after the commit, before the next message); with 3
//! processes the clients are spread over them round-robin. The 1-process run is made before and after the
//! 3-process run, and the ratio is taken against their mean, since the machine is shared and noisy.
//!
//! Run: `REBOUND_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench scale_out`
//! (REBOUND_BENCH_MESSAGES, default 3000; REBOUND_BENCH_CLIENTS, default 9).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Client, Server, count_messages};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Starts `processes` servers on a fresh schema, pushes `messages` through `clients` connections, stops
/// them; messages per second acknowledged (every one checked to be stored).
fn run(processes: usize, messages: &[Vec<u8>], clients: usize) -> f64 {
    let schema = common::postgres_schema("bench_scale").expect("REBOUND_TEST_POSTGRES_URL");
    let dirs: Vec<tempfile::TempDir> = (0..processes).map(|_| tempfile::tempdir().unwrap()).collect();
    // One at a time, so the migrations are done once before the others start.
    let mut servers: Vec<Server> =
        dirs.iter().map(|d| Server::launch(d.path(), &schema.url, "max_batch = 256\ncommit_delay = \"2ms\"", "", "rebound=warn")).collect();
    let started = Instant::now();
    std::thread::scope(|s| {
        for c in 0..clients {
            let addr = servers[c % processes].addr;
            let mine: Vec<&Vec<u8>> = messages.iter().skip(c).step_by(clients).collect();
            s.spawn(move || {
                let mut client = Client::ready(addr);
                for m in mine {
                    let replies = client.deliver_pipelined("", &["bounces@example.com"], m);
                    assert_eq!(replies[0].code, 250, "{replies:?}");
                }
                client.command("QUIT");
            });
        }
    });
    let rate = messages.len() as f64 / started.elapsed().as_secs_f64();
    for server in &mut servers {
        server.signal("TERM");
        assert!(server.wait(Duration::from_secs(60)).is_some_and(|s| s.success()), "serve did not stop cleanly");
    }
    assert_eq!(count_messages(&schema.url) as usize, messages.len(), "acknowledged = stored, once");
    rate
}

fn main() {
    if std::env::var("REBOUND_TEST_POSTGRES_URL").is_err() {
        println!("scale_out: SKIPPED, REBOUND_TEST_POSTGRES_URL is not set");
        return;
    }
    let n = env_usize("REBOUND_BENCH_MESSAGES", 3000);
    let clients = env_usize("REBOUND_BENCH_CLIENTS", 9);
    let messages: Vec<Vec<u8>> = (0..n).map(common::sample_message).collect();
    let one_before = run(1, &messages, clients);
    let three = run(3, &messages, clients);
    let one_after = run(1, &messages, clients);
    let baseline = (one_before + one_after) / 2.0;
    println!("scale_out postgres {clients} clients {n} messages  1 process:   {one_before:>7.0} msg/s (before), {one_after:>7.0} msg/s (after)");
    println!("scale_out postgres {clients} clients {n} messages  3 processes: {three:>7.0} msg/s");
    println!("scale_out postgres 3 processes / 1 process = {:.2}x (load average {})", three / baseline, load());
}

/// The 1-minute load average, to read the figures by.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg").ok().and_then(|l| l.split_whitespace().next().map(str::to_string)).unwrap_or_default()
}
