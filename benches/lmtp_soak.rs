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

use common::load::{Conn, bounce, env_u64, micros, soak};
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
    let run = soak(pid, seconds, connections);
    let total = run.latencies.len();
    let stored = count_messages(&url);
    println!("lmtp_soak: {}", run.summary(pid, "messages acknowledged", "msg/s"));
    assert_eq!(stored, total as i64, "rows in the database vs messages acknowledged");
    drop(server);
}
