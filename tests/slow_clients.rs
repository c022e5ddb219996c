//! Slow and oversized clients do not starve the others (issue 4), against `rebound serve` as a real process:
//! while a slowloris (a byte at a time, never a whole line) and an oversized-input client (a command line
//! of megabytes, a message over the size limit, a policy line over 1 MiB) are connected, 4 normal clients
//! keep being served, each message or request answered promptly; the slow client is closed once its
//! line is not complete within `idle_timeout`, the oversized one gets its refusal and memory stays bounded.
//! Tricklers that complete every line in time (a byte at a time, a line well within `idle_timeout`) are cut
//! at the deadline of their transaction (LMTP `transaction_timeout`) or request (`[spf]
//! request_timeout_secs`), and the connection slots they held serve others again.

mod common;
mod spf_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::load::{Conn, bounce, micros, percentile_ms, status_mib};
use common::{Server, dot_stuff, sqlite_url};
use spf_support::txt;

/// Normal clients.
const NORMAL: usize = 4;
/// How long the normal clients run while the bad ones are connected.
const RUN: Duration = Duration::from_secs(6);
/// A normal message or request taking longer than this counts as starved.
const PROMPT: Duration = Duration::from_secs(2);

/// Runs `NORMAL` clients doing `one(client, n)` until `stop`; returns each client's latencies (µs).
fn normal_clients<C: Send + 'static>(
    stop: &Arc<AtomicBool>,
    open: impl Fn() -> C + Send + Sync + 'static,
    one: impl Fn(&mut C, usize, usize) + Send + Sync + 'static,
) -> Vec<JoinHandle<Vec<u32>>> {
    let (open, one) = (Arc::new(open), Arc::new(one));
    (0..NORMAL)
        .map(|c| {
            let (stop, open, one) = (stop.clone(), open.clone(), one.clone());
            std::thread::spawn(move || {
                let mut client = open();
                let mut latencies = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    one(&mut client, c, n);
                    latencies.push(micros(start));
                    n += 1;
                }
                latencies
            })
        })
        .collect()
}

/// Joins the normal clients; checks that each was served and none waited longer than `PROMPT`.
fn served(label: &str, threads: Vec<JoinHandle<Vec<u32>>>) -> usize {
    let per_client: Vec<Vec<u32>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut all: Vec<u32> = per_client.iter().flatten().copied().collect();
    all.sort_unstable();
    eprintln!(
        "slow_clients ({label}): {} answers to {NORMAL} normal clients in {RUN:?} ({:?} each); p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        all.len(),
        per_client.iter().map(Vec::len).collect::<Vec<_>>(),
        percentile_ms(&all, 0.5),
        percentile_ms(&all, 0.99),
        percentile_ms(&all, 1.0)
    );
    assert!(per_client.iter().all(|l| l.len() >= 10), "{label}: a normal client was barely served");
    let max = Duration::from_micros(u64::from(*all.last().unwrap()));
    assert!(max < PROMPT, "{label}: a normal client waited {max:?}");
    all.len()
}

/// Writes `bytes` a byte at a time every `pause` on its own thread until the peer closes or `stop`.
fn drip(mut stream: TcpStream, bytes: &'static [u8], pause: Duration, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for b in bytes.iter().cycle() {
            if stop.load(Ordering::Relaxed) || stream.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(pause);
        }
    })
}

/// Reads until the server closes the connection (or `timeout`); what it said, and when it closed (time
/// since `since`).
fn until_closed(stream: &TcpStream, since: Instant, timeout: Duration) -> (String, Option<Duration>) {
    let start = since;
    let mut stream = stream.try_clone().unwrap();
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&text).into_owned(), Some(start.elapsed())),
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&text).into_owned(), Some(start.elapsed()));
            }
            Err(_) => return (String::from_utf8_lossy(&text).into_owned(), None),
        }
    }
}

#[test]
fn lmtp_slowloris_and_oversized_clients_do_not_starve_normal_ones() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let idle = Duration::from_secs(2);
    let server = Server::launch(
        dir.path(),
        &url,
        "",
        "idle_timeout = \"2s\"\nmax_message_size = 65536",
        "warn,rebound::serve=info",
    );
    let (addr, pid) = (server.addr, server.pid());
    let rss_before = status_mib(pid, "VmRSS:");
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();

    // Slowloris in a command line: "LHLO ..." a byte every 300 ms, never finished in time.
    let slow_cmd = TcpStream::connect(addr).unwrap();
    let slow_cmd_drip = drip(slow_cmd.try_clone().unwrap(), b"LHLO slow.example.net", Duration::from_millis(300), stop.clone());
    // Slowloris inside DATA: a message whose first line never ends.
    let mut slow_data = Conn::open(addr, Duration::from_secs(10)).unwrap();
    slow_data.stream.write_all(b"MAIL FROM:<>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n").unwrap();
    for code in [250, 250, 354] {
        slow_data.expect(code).unwrap();
    }
    let slow_data_drip = drip(slow_data.stream.try_clone().unwrap(), b"Subject: drip", Duration::from_millis(300), stop.clone());
    // Oversized: a 4 MiB command line, then a 1 MiB message over the 64 KiB limit, sent as fast as read.
    let mut big = Conn::open(addr, Duration::from_secs(30)).unwrap();
    let big_thread = std::thread::spawn(move || {
        let mut line = vec![b'X'; 4 << 20];
        line.extend_from_slice(b"\r\nNOOP\r\n");
        big.stream.write_all(&line).unwrap();
        let too_long = big.reply().unwrap();
        let noop = big.reply().unwrap();
        let mut message = b"Subject: big\r\n\r\n".to_vec();
        for _ in 0..(1 << 20) / 100 {
            message.extend_from_slice(&[b'y'; 98]);
            message.extend_from_slice(b"\r\n");
        }
        let size = big.deliver("", &dot_stuff(&message), || {}).unwrap();
        (too_long, noop, size)
    });

    let threads = normal_clients(
        &stop,
        move || Conn::open(addr, Duration::from_secs(30)).unwrap(),
        |conn, c, n| assert_eq!(conn.deliver("", &dot_stuff(&bounce("slow", c, n)), || {}).unwrap(), 250),
    );
    let (slow_cmd_said, slow_cmd_closed) = until_closed(&slow_cmd, t0, RUN);
    let (slow_data_said, slow_data_closed) = until_closed(&slow_data.stream, t0, RUN);
    std::thread::sleep(RUN.saturating_sub(t0.elapsed()));
    stop.store(true, Ordering::Relaxed);
    let stored = served("lmtp", threads);
    let (too_long, noop, size) = big_thread.join().unwrap();
    slow_cmd_drip.join().unwrap();
    slow_data_drip.join().unwrap();

    assert_eq!((too_long, noop, size), (500, 250, 552), "oversized line, then NOOP, then a message over the limit");
    assert!(slow_cmd_said.starts_with("220 ") && slow_cmd_said.contains("\r\n421 4.4.2 "), "{slow_cmd_said:?}");
    assert!(slow_data_said.starts_with("421 4.4.2"), "{slow_data_said:?}");
    let (a, b) = (slow_cmd_closed.expect("slowloris (command) not closed"), slow_data_closed.expect("slowloris (DATA) not closed"));
    assert!(a < idle + Duration::from_secs(2) && b < idle + Duration::from_secs(2), "closed after {a:?} and {b:?}");
    let rss_after = status_mib(pid, "VmRSS:");
    eprintln!(
        "slow_clients (lmtp): slowloris closed after {a:.1?} (command) and {b:.1?} (DATA) with 421 4.4.2; \
         4 MiB line -> 500, 1 MiB message -> 552; server RSS {rss_before:.1} -> {rss_after:.1} MiB"
    );
    assert!(rss_after < rss_before + 32.0, "memory grew by {:.1} MiB", rss_after - rss_before);
    assert_eq!(common::count_messages(&url), stored as i64);
}

/// LMTP tricklers: how many, and the deadline of their transactions.
const TRICKLERS: usize = 3;
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(3);

#[test]
fn lmtp_tricklers_are_cut_at_the_transaction_deadline_and_their_slots_serve_others() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    // Every slot is taken by the normal clients and the tricklers; each trickler line comes within 1.1 s,
    // well within idle_timeout, so only the transaction deadline can cut them.
    let server = Server::launch(
        dir.path(),
        &url,
        "",
        &format!("idle_timeout = \"2s\"\ntransaction_timeout = \"3s\"\nmax_connections = {}", NORMAL + TRICKLERS),
        "warn,rebound::serve=info",
    );
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();

    // Two trickle their data, a header line of 11 bytes at 100 ms a byte; one trickles NOOPs between
    // RCPT and DATA, 6 bytes at 150 ms a byte.
    let tricklers: Vec<(Conn, Instant, JoinHandle<()>)> = (0..TRICKLERS)
        .map(|i| {
            let mut conn = Conn::open(addr, Duration::from_secs(10)).unwrap();
            let mail_sent = Instant::now();
            let drip_thread = if i < 2 {
                conn.stream.write_all(b"MAIL FROM:<>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n").unwrap();
                for code in [250, 250, 354] {
                    conn.expect(code).unwrap();
                }
                drip(conn.stream.try_clone().unwrap(), b"X-Drip: x\r\n", Duration::from_millis(100), stop.clone())
            } else {
                conn.stream.write_all(b"MAIL FROM:<>\r\nRCPT TO:<b@example.com>\r\n").unwrap();
                for code in [250, 250] {
                    conn.expect(code).unwrap();
                }
                drip(conn.stream.try_clone().unwrap(), b"NOOP\r\n", Duration::from_millis(150), stop.clone())
            };
            (conn, mail_sent, drip_thread)
        })
        .collect();
    let opened = Arc::new(AtomicUsize::new(0));
    let counter = opened.clone();
    let threads = normal_clients(
        &stop,
        move || {
            let conn = Conn::open(addr, Duration::from_secs(30)).unwrap();
            counter.fetch_add(1, Ordering::Relaxed);
            conn
        },
        |conn, c, n| assert_eq!(conn.deliver("", &dot_stuff(&bounce("trickle", c, n)), || {}).unwrap(), 250),
    );
    while opened.load(Ordering::Relaxed) < NORMAL {
        assert!(t0.elapsed() < TRANSACTION_TIMEOUT, "the normal clients did not connect in time");
        std::thread::sleep(Duration::from_millis(10));
    }
    // All slots are held: one more client is turned away.
    let mut probe = String::new();
    BufReader::new(TcpStream::connect(addr).unwrap()).read_line(&mut probe).unwrap();
    assert!(probe.starts_with("421 4.3.2"), "with every slot held: {probe:?}");

    let mut cut = Vec::new();
    for (conn, mail_sent, _) in &tricklers {
        let (said, closed) = until_closed(&conn.stream, *mail_sent, RUN);
        let closed = closed.expect("a trickler was not cut");
        assert!(said.contains("421 4.4.2 Transaction time limit exceeded"), "{said:?}");
        assert!(
            closed >= TRANSACTION_TIMEOUT - Duration::from_millis(100) && closed < TRANSACTION_TIMEOUT + Duration::from_millis(1500),
            "trickler cut after {closed:?}, its deadline {TRANSACTION_TIMEOUT:?}"
        );
        cut.push(closed);
    }
    // Their slots serve new clients again (a slot is freed a moment after its connection closes).
    let mut late = None;
    for _ in 0..50 {
        late = Conn::open(addr, Duration::from_secs(10)).ok();
        if late.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut late = late.expect("no slot free after the tricklers were cut");
    assert_eq!(late.deliver("", &dot_stuff(&bounce("trickle-late", 0, 0)), || {}).unwrap(), 250);
    std::thread::sleep(RUN.saturating_sub(t0.elapsed()));
    stop.store(true, Ordering::Relaxed);
    let acknowledged = served("lmtp tricklers", threads);
    for (_, _, drip_thread) in tricklers {
        drip_thread.join().unwrap();
    }
    server.wait_for_log("LMTP transaction not complete within transaction_timeout");
    eprintln!(
        "slow_clients (lmtp tricklers): {TRICKLERS} tricklers holding {TRICKLERS} of {} slots cut after {cut:.1?} \
         (deadline {TRANSACTION_TIMEOUT:?}) with 421 4.4.2; a client refused while they held their slots was \
         served once they were cut",
        NORMAL + TRICKLERS
    );
    // The normal clients' messages and the late one; nothing of the tricklers.
    assert_eq!(common::count_messages(&url), acknowledged as i64 + 1);
}

/// One policy request for a real SPF check; the action line.
fn ask(reader: &mut BufReader<TcpStream>, c: usize, n: usize) -> String {
    let req = format!(
        "request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.{}\nhelo_name=mx.example.com\n\
         sender=s{n}@example.com\nrecipient=r@ours.example\ninstance=slow.{c}.{n}\n\n",
        n % 250 + 1
    );
    reader.get_mut().write_all(req.as_bytes()).unwrap();
    let mut action = String::new();
    reader.read_line(&mut action).unwrap();
    let mut blank = String::new();
    reader.read_line(&mut blank).unwrap();
    action
}

#[test]
fn policy_slowloris_and_oversized_clients_do_not_starve_normal_ones() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dns = rt.block_on(spf_support::start(&[("example.com", txt("v=spf1 ip4:192.0.2.0/24 -all"))]));
    let dir = tempfile::tempdir().unwrap();
    let request_timeout = Duration::from_secs(2);
    let (server, addr) = Server::with_policy_server_config(dir.path(), &dns.spec(), "request_timeout_secs = 2");
    let stop = Arc::new(AtomicBool::new(false));

    // Two tricklers: one never ends its first line, one sends whole lines (a line in 1.2 s) but never
    // the empty line that ends the request. The request clock runs from the first byte.
    let started = Instant::now();
    let slow = TcpStream::connect(addr).unwrap();
    let slow_drip = drip(slow.try_clone().unwrap(), b"request=smtpd_access_policy", Duration::from_millis(300), stop.clone());
    let lines = TcpStream::connect(addr).unwrap();
    let lines_drip = drip(lines.try_clone().unwrap(), b"x=y\n", Duration::from_millis(300), stop.clone());
    let mut big = TcpStream::connect(addr).unwrap();
    let big_thread = std::thread::spawn(move || {
        // A 4 MiB line: the server reads at most 1 MiB of it, then closes.
        let start = Instant::now();
        let _ = big.write_all(&vec![b'x'; 4 << 20]);
        until_closed(&big, start, Duration::from_secs(10))
    });
    let threads = normal_clients(
        &stop,
        move || BufReader::new(TcpStream::connect(addr).unwrap()),
        |reader, c, n| {
            let action = ask(reader, c, n);
            assert!(action.starts_with("action=PREPEND Received-SPF: pass"), "{action:?}");
        },
    );
    let (_, slow_closed) = until_closed(&slow, started, RUN);
    let (_, lines_closed) = until_closed(&lines, started, RUN);
    std::thread::sleep(RUN.saturating_sub(started.elapsed()));
    stop.store(true, Ordering::Relaxed);
    served("policy", threads);
    let (_, big_closed) = big_thread.join().unwrap();
    assert!(big_closed.is_some(), "the oversized-line client was not disconnected");
    for (what, closed) in [("first line", slow_closed), ("whole lines", lines_closed)] {
        let closed = closed.unwrap_or_else(|| panic!("the trickler ({what}) was not disconnected"));
        assert!(
            closed >= request_timeout - Duration::from_millis(100) && closed < request_timeout + Duration::from_millis(1500),
            "the trickler ({what}) was disconnected after {closed:?}, its request timeout {request_timeout:?}"
        );
    }
    eprintln!(
        "slow_clients (policy): tricklers disconnected after {:.1?} (first line) and {:.1?} (whole lines), \
         request timeout {request_timeout:?}",
        slow_closed.unwrap(),
        lines_closed.unwrap()
    );
    slow_drip.join().unwrap();
    lines_drip.join().unwrap();
    drop(slow);
    drop(server);
    drop(dns);
}
