//! What the load and fault tests share (the durability test, the database-outage and slow-client tests, and
//! the LMTP and policy soak benches): environment knobs, the unique bounce each client sends, an LMTP
//! connection that reports every failure as `Err` (the server may die or refuse at any byte), and the
//! /proc sampling of a server process (RSS, peak RSS, open descriptors) with latency percentiles.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An integer from the environment, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Message `n` of client `c` of a run tagged `tag`: unique bytes, CRLF line ends, a DSN-like bounce so the
/// whole ingest path (parse, classify, store) runs.
pub fn bounce(tag: &str, c: usize, n: usize) -> Vec<u8> {
    format!(
        "From: MAILER-DAEMON@mx.example.net\r\nTo: bounces@example.com\r\nSubject: Undelivered mail {c}-{n}\r\n\
         Message-ID: <{tag}-{c}-{n}@mx.example.net>\r\n\r\n<user{c}x{n}@example.net>: host \
         mx.example.net[192.0.2.1] said: 550 5.1.1 <user{c}x{n}@example.net>: Recipient address rejected: \
         User unknown\r\n"
    )
    .into_bytes()
}

/// One LMTP connection that reports every failure as `Err` instead of panicking.
pub struct Conn {
    /// The socket (for writes).
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    /// Connect, read the 220 greeting and say LHLO; replies wait at most `read_timeout`.
    pub fn open(addr: SocketAddr, read_timeout: Duration) -> std::io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(read_timeout))?;
        let reader = BufReader::new(stream.try_clone()?);
        let mut conn = Conn { stream, reader };
        conn.expect(220)?;
        conn.stream.write_all(b"LHLO load.test\r\n")?;
        conn.expect(250)?;
        Ok(conn)
    }

    /// The code of the next (possibly multi-line) reply; `InvalidData` for a malformed one.
    pub fn reply(&mut self) -> std::io::Result<u16> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "server closed"));
            }
            let code = line.get(..3).and_then(|c| c.parse::<u16>().ok()).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("malformed reply {line:?}"))
            })?;
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(code);
            }
        }
    }

    /// The next reply must have `code`.
    pub fn expect(&mut self, code: u16) -> std::io::Result<()> {
        match self.reply()? {
            c if c == code => Ok(()),
            c => Err(std::io::Error::other(format!("expected {code}, got {c}"))),
        }
    }

    /// One transaction to `bounces@example.com`, pipelined as Postfix does; the DATA reply code. `data` is
    /// already dot-stuffed. `on_sent` runs once the final dot is written.
    pub fn deliver(&mut self, from: &str, data: &[u8], on_sent: impl FnOnce()) -> std::io::Result<u16> {
        self.stream.write_all(format!("MAIL FROM:<{from}>\r\nRCPT TO:<bounces@example.com>\r\nDATA\r\n").as_bytes())?;
        self.expect(250)?;
        self.expect(250)?;
        self.expect(354)?;
        self.stream.write_all(data)?;
        on_sent();
        self.reply()
    }

    /// Say QUIT, ignoring errors.
    pub fn quit(mut self) {
        let _ = self.stream.write_all(b"QUIT\r\n");
    }
}

/// A `kB` field of /proc/PID/status (`VmRSS:`, `VmHWM:`), in MiB; NaN if unreadable.
pub fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Open file descriptors of the process.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The `p` quantile (0..=1) of sorted latencies in microseconds, in milliseconds.
pub fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// Elapsed time in microseconds, saturated to `u32`.
pub fn micros(since: Instant) -> u32 {
    since.elapsed().as_micros().min(u128::from(u32::MAX)) as u32
}

/// One sample of the server process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Seconds since the start of the run.
    pub t: f64,
    /// Completed operations per second in the interval before the sample.
    pub rate: f64,
    /// Resident set, MiB.
    pub rss: f64,
    /// Peak resident set (VmHWM), MiB.
    pub hwm: f64,
    /// Open descriptors.
    pub fds: usize,
}

/// Sample process `pid` every `every` for `seconds`, printing a table line per sample; `done` counts the
/// operations completed so far. Returns the samples (the first at t = 0).
pub fn sample_for(pid: u32, seconds: u64, every: Duration, done: impl Fn() -> u64) -> Vec<Sample> {
    let start = Instant::now();
    let total = Duration::from_secs(seconds);
    let sample = |rate| Sample {
        t: start.elapsed().as_secs_f64(),
        rate,
        rss: status_mib(pid, "VmRSS:"),
        hwm: status_mib(pid, "VmHWM:"),
        fds: open_fds(pid),
    };
    let print = |s: &Sample| println!("{:>6.0} {:>10.0} {:>9.1} {:>9.1} {:>5}", s.t, s.rate, s.rss, s.hwm, s.fds);
    println!("{:>6} {:>10} {:>9} {:>9} {:>5}", "t(s)", "ops/s", "RSS MiB", "HWM MiB", "fds");
    let mut samples = vec![sample(f64::NAN)];
    print(&samples[0]);
    let mut last = (Instant::now(), done());
    while start.elapsed() < total {
        std::thread::sleep(every.min(total.saturating_sub(start.elapsed())));
        let now = (Instant::now(), done());
        let s = sample((now.1 - last.1) as f64 / now.0.duration_since(last.0).as_secs_f64());
        print(&s);
        samples.push(s);
        last = now;
    }
    samples
}

/// What a [`soak`] measured.
pub struct Soak {
    /// The server samples, every 10 s (the first at t = 0).
    pub samples: Vec<Sample>,
    /// Every request's latency, µs, sorted.
    pub latencies: Vec<u32>,
    /// Seconds the load ran.
    pub elapsed: f64,
}

impl Soak {
    /// The figures both soaks print: how many completed (`what`, e.g. "messages acknowledged") in the time,
    /// the rate (`per_second`, e.g. "msg/s"), p50/p99/max latency, the server
    /// `pid`'s peak RSS, and RSS and descriptors from the first sample after warm-up (10 s) to the last.
    pub fn summary(&self, pid: u32, what: &str, per_second: &str) -> String {
        let total = self.latencies.len();
        let (first, last) = (self.samples.get(1).unwrap_or(&self.samples[0]), self.samples.last().unwrap());
        format!(
            "{total} {what} in {:.0} s = {:.0} {per_second}; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
             peak RSS (VmHWM) {:.1} MiB; RSS {:.1} -> {:.1} MiB, fds {} -> {} (first 10 s sample -> end)",
            self.elapsed,
            total as f64 / self.elapsed,
            percentile_ms(&self.latencies, 0.50),
            percentile_ms(&self.latencies, 0.99),
            percentile_ms(&self.latencies, 1.0),
            status_mib(pid, "VmHWM:"),
            first.rss,
            last.rss,
            first.fds,
            last.fds,
        )
    }
}

/// Sustained load: one thread per client, each calling its closure with n = 0, 1, 2, ... (one request,
/// returning its latency in µs) until `seconds` are over, while [`sample_for`] samples the server `pid`
/// every 10 s.
pub fn soak<C: FnMut(usize) -> u32 + Send>(pid: u32, seconds: u64, clients: Vec<C>) -> Soak {
    let done = AtomicBool::new(false);
    let completed = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let threads: Vec<_> = clients
            .into_iter()
            .map(|mut request| {
                let (done, completed) = (&done, &completed);
                scope.spawn(move || {
                    let mut latencies = Vec::new();
                    while !done.load(Ordering::Relaxed) {
                        latencies.push(request(latencies.len()));
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                    latencies
                })
            })
            .collect();
        let start = Instant::now();
        let samples = sample_for(pid, seconds, Duration::from_secs(10), || completed.load(Ordering::Relaxed));
        done.store(true, Ordering::Relaxed);
        let mut latencies: Vec<u32> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        let elapsed = start.elapsed().as_secs_f64();
        latencies.sort_unstable();
        Soak { samples, latencies, elapsed }
    })
}

/// sha256 of `bytes`, lower-case hex (the `messages.sha256` column).
pub fn sha_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// LMTP clients that behave like an MTA: each delivers its messages in order and retries each one (after a
/// 4xx, a refused or cut connection) until it is answered 250. Counters are kept per phase (a kill round, a
/// database outage, ...), which the test advances.
pub struct Fleet {
    /// Tag of the messages (part of their Message-ID, so runs do not collide).
    pub tag: &'static str,
    /// Number of clients.
    pub clients: usize,
    /// Messages per client.
    pub per_client: usize,
    /// How long a client waits for a reply before it gives the connection up (and resends).
    pub read_timeout: Duration,
    /// Where the server listens now; `None` while it is down.
    pub addr: Mutex<Option<SocketAddr>>,
    /// The current phase.
    pub phase: AtomicUsize,
    /// Messages whose data was sent (final dot), per phase.
    pub sent: Vec<AtomicU64>,
    /// 250 answers received, per phase.
    pub acked: Vec<AtomicU64>,
    /// 4xx answers received after the data, per phase.
    pub deferred: Vec<AtomicU64>,
    /// sha256 of every message acknowledged with 250.
    pub acknowledged: Mutex<HashSet<String>>,
    /// Anything a correct server must never do (5xx, malformed replies).
    pub violations: Mutex<Vec<String>>,
    /// Clients still working.
    pub running: AtomicUsize,
    /// Set when the test gives up.
    pub abort: AtomicBool,
}

impl Fleet {
    /// A fleet of `clients` x `per_client` messages with counters for `phases` phases, not started.
    pub fn new(tag: &'static str, clients: usize, per_client: usize, phases: usize, read_timeout: Duration) -> Arc<Fleet> {
        let counters = || (0..phases).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Arc::new(Fleet {
            tag,
            clients,
            per_client,
            read_timeout,
            addr: Mutex::new(None),
            phase: AtomicUsize::new(0),
            sent: counters(),
            acked: counters(),
            deferred: counters(),
            acknowledged: Mutex::new(HashSet::new()),
            violations: Mutex::new(Vec::new()),
            running: AtomicUsize::new(clients),
            abort: AtomicBool::new(false),
        })
    }

    /// Message `n` of client `c`.
    pub fn message(&self, c: usize, n: usize) -> Vec<u8> {
        bounce(self.tag, c, n)
    }

    /// The sha256 of every message the fleet will send.
    pub fn all(&self) -> HashSet<String> {
        (0..self.clients).flat_map(|c| (0..self.per_client).map(move |n| sha_hex(&self.message(c, n)))).collect()
    }

    /// Start the client threads (they wait while `addr` is `None`).
    pub fn start(self: &Arc<Self>) -> Vec<std::thread::JoinHandle<()>> {
        (0..self.clients)
            .map(|c| {
                let fleet = self.clone();
                std::thread::spawn(move || {
                    fleet.client(c);
                    fleet.running.fetch_sub(1, Ordering::Relaxed);
                })
            })
            .collect()
    }

    /// (sent, acknowledged, deferred) in `phase`.
    pub fn counts(&self, phase: usize) -> (u64, u64, u64) {
        let get = |v: &[AtomicU64]| v[phase].load(Ordering::Relaxed);
        (get(&self.sent), get(&self.acked), get(&self.deferred))
    }

    /// Totals over all phases: (sent, acknowledged, deferred).
    pub fn totals(&self) -> (u64, u64, u64) {
        let sum = |v: &[AtomicU64]| v.iter().map(|a| a.load(Ordering::Relaxed)).sum();
        (sum(&self.sent), sum(&self.acked), sum(&self.deferred))
    }

    /// Wait until every client is done, at most `timeout`; whether they are.
    pub fn wait_done(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        while self.running.load(Ordering::Relaxed) > 0 {
            if start.elapsed() > timeout {
                self.abort.store(true, Ordering::Relaxed);
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Client `c`: deliver each of its messages, retrying until 250.
    fn client(&self, c: usize) {
        let mut conn: Option<Conn> = None;
        for n in 0..self.per_client {
            let raw = self.message(c, n);
            let data = super::dot_stuff(&raw);
            let sha = sha_hex(&raw);
            let from = format!("bounce-{c}-{n}@example.com");
            loop {
                if self.abort.load(Ordering::Relaxed) {
                    return;
                }
                if conn.is_none() {
                    let addr = *self.addr.lock().unwrap();
                    conn = addr.and_then(|a| Conn::open(a, self.read_timeout).ok());
                    if conn.is_none() {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                }
                let phase = self.phase.load(Ordering::Relaxed);
                let result = conn.as_mut().unwrap().deliver(&from, &data, || {
                    self.sent[phase].fetch_add(1, Ordering::Relaxed);
                });
                let phase = self.phase.load(Ordering::Relaxed);
                match result {
                    Ok(250) => {
                        self.acked[phase].fetch_add(1, Ordering::Relaxed);
                        self.acknowledged.lock().unwrap().insert(sha);
                        break;
                    }
                    Ok(code) if (400..500).contains(&code) => {
                        // A temporary failure: the MTA keeps the message and tries again later.
                        self.deferred[phase].fetch_add(1, Ordering::Relaxed);
                        conn = None;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Ok(code) => {
                        self.violations.lock().unwrap().push(format!("message {c}-{n} answered {code}"));
                        conn = None;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        self.violations.lock().unwrap().push(format!("message {c}-{n}: {e}"));
                        conn = None;
                    }
                    // Connection refused, reset, closed or timed out: reconnect and send again.
                    Err(_) => conn = None,
                }
            }
        }
        if let Some(conn) = conn {
            conn.quit();
        }
    }

    /// Each acknowledged message is stored exactly once in the database at `url`; returns how many rows
    /// there are in all.
    pub fn check_acknowledged(&self, url: &str, when: &str) -> usize {
        // The acknowledgements first: clients may still be running, and a message answered after the read
        // of the rows would look lost.
        let acknowledged = self.acknowledged.lock().unwrap().clone();
        let rows = stored(url);
        let lost: Vec<&String> = acknowledged.iter().filter(|sha| !rows.contains_key(*sha)).collect();
        assert!(lost.is_empty(), "{when}: {} acknowledged messages are not in the database, e.g. {:?}", lost.len(), lost[0]);
        let doubled: Vec<(&String, &i64)> = rows.iter().filter(|(_, n)| **n != 1).collect();
        assert!(doubled.is_empty(), "{when}: messages stored more than once: {doubled:?}");
        rows.len()
    }

    /// At the end: every message of the fleet, acknowledged or not, is stored exactly once, nothing else is,
    /// every one was acknowledged, and no client saw an answer a correct server never gives.
    pub fn check_complete(&self, url: &str) {
        let violations = self.violations.lock().unwrap().clone();
        assert!(violations.is_empty(), "answers a correct server never gives: {violations:?}");
        let total = self.clients * self.per_client;
        let rows = stored(url);
        let missing = self.all().iter().filter(|sha| !rows.contains_key(*sha)).count();
        assert_eq!(missing, 0, "{missing} of {total} messages never stored");
        assert_eq!(rows.len(), total, "rows that are none of the messages sent");
        assert!(rows.values().all(|n| *n == 1), "a message stored twice");
        assert_eq!(self.acknowledged.lock().unwrap().len(), total);
    }
}

/// sha256 → number of rows, for every stored message.
pub fn stored(url: &str) -> HashMap<String, i64> {
    let sql = "SELECT sha256, COUNT(*) FROM messages GROUP BY sha256";
    super::block_on(async {
        let rows: Vec<(String, i64)> = if url.starts_with("sqlite:") {
            let pool = sqlx::SqlitePool::connect(url).await.unwrap();
            let rows = sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
            pool.close().await;
            rows
        } else {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            let rows = sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
            pool.close().await;
            rows
        };
        rows.into_iter().collect()
    })
}
