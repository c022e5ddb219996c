//! Sustained SPF policy load (issue 4, "Load"), the policy-server twin of `lmtp_soak`: `rebound serve`
//! (the binary of this profile) with an `[spf]` section on a free port, resolving through a DNS server on
//! 127.0.0.1 (tests/spf_support) that serves 100 sender domains and 100 HELO names, and this process as the
//! load generator: 8 clients send Postfix policy requests (each a new transaction, so both identities are
//! checked and stored) as fast as they are answered, for a fixed time. Every 10 s it prints the interval's
//! throughput and the server's RSS, peak RSS and open descriptors; at the end throughput, p50/p99/max
//! latency, and a check that every answered request reached `spf_checks` (two rows each).
//!
//! Run: `nice -n 10 cargo bench --bench policy_soak` (REBOUND_SOAK_SECONDS, default 180;
//! REBOUND_SOAK_CLIENTS, default 8).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/spf_support/mod.rs"]
mod spf_support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::load::{env_u64, micros, soak};
use common::{Server, scalar, sqlite_url};
use spf_support::{Rec, txt};

const DOMAINS: usize = 100;

/// The zone: sender domains d1..d100.bench.test (ip4, include and mx), HELO names mail1..100.client.test.
fn zone() -> Vec<(&'static str, Rec)> {
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let mut zone = vec![("_spf.bench.test", txt("v=spf1 ip4:203.0.113.0/24 ~all"))];
    for i in 1..=DOMAINS {
        let d = leak(format!("d{i}.bench.test"));
        let mx = leak(format!("mx.d{i}.bench.test"));
        zone.push((d, txt("v=spf1 ip4:198.51.100.0/24 include:_spf.bench.test mx -all")));
        zone.push((d, Rec::Mx(10, mx)));
        zone.push((mx, Rec::A(leak(format!("198.51.100.{i}")))));
        let helo = leak(format!("mail{i}.client.test"));
        zone.push((helo, txt("v=spf1 a -all")));
        zone.push((helo, Rec::A(leak(format!("192.0.2.{i}")))));
    }
    zone
}

/// Request `n` of client `c`: a new transaction from a client that passes, soft-fails or fails.
fn request(c: usize, n: usize) -> String {
    let i = (c * 7919 + n) % DOMAINS + 1;
    let ip = match n % 3 {
        0 => format!("198.51.100.{i}"),
        1 => format!("203.0.113.{i}"),
        _ => format!("192.0.2.{i}"),
    };
    format!(
        "request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address={ip}\nhelo_name=mail{i}.client.test\n\
         sender=user{n}@d{i}.bench.test\nrecipient=postmaster@ours.example\ninstance=soak.{c}.{n}\n\n"
    )
}

fn main() {
    let seconds = env_u64("REBOUND_SOAK_SECONDS", 180);
    let clients = env_u64("REBOUND_SOAK_CLIENTS", 8) as usize;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dns = rt.block_on(spf_support::start(&zone()));
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let (server, addr) = Server::with_policy_server(dir.path(), &dns.spec());
    let pid = server.pid();
    println!("policy_soak: {clients} clients for {seconds} s against pid {pid} on {addr} ({url})");

    let connections: Vec<_> = (0..clients)
        .map(|c| {
            let stream = TcpStream::connect(addr).expect("policy connection");
            stream.set_nodelay(true).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            move |n: usize| {
                let start = Instant::now();
                reader.get_mut().write_all(request(c, n).as_bytes()).expect("request");
                line.clear();
                reader.read_line(&mut line).expect("answer");
                assert!(line.starts_with("action="), "{line:?}");
                let mut blank = String::new();
                reader.read_line(&mut blank).expect("end of answer");
                micros(start)
            }
        })
        .collect();
    let run = soak(pid, seconds, connections);
    let total = run.latencies.len();
    // The checks reach the database through the writer, shortly after their answers.
    let want = 2 * total as i64;
    let mut rows = 0;
    for _ in 0..300 {
        rows = scalar(&url, "SELECT COUNT(*) FROM spf_checks");
        if rows >= want {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "policy_soak: {}; {rows} spf_checks rows; {} DNS queries",
        run.summary(pid, "requests answered", "req/s"),
        dns.queries()
    );
    assert_eq!(rows, want, "spf_checks rows vs two identities per answered request");
    drop(server);
    drop(dns);
}
