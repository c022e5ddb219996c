//! Durability under kill -9 (issue 4): `rebound serve` runs as a real process, 8 LMTP client threads push
//! unique messages and retry each one until it is answered 250 (as an MTA does), and the server is killed
//! with SIGKILL at random moments (seeded RNG) and restarted on the same database, 10 times. After every kill
//! each message acknowledged so far must be in the database; at the end every message must be there exactly
//! once. SQLite always; Postgres too when REBOUND_TEST_POSTGRES_URL is set (a fresh schema).
//!
//! Knobs (environment): REBOUND_DURABILITY_SEED (default 4), REBOUND_DURABILITY_MESSAGES (per client,
//! default 250), REBOUND_DURABILITY_ROUNDS (default 10).

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use common::{Server, block_on, dot_stuff};

const CLIENTS: usize = 8;
/// The whole test fails rather than hang past this.
const DEADLINE: Duration = Duration::from_secs(600);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Message `n` of client `c`: unique bytes, CRLF line ends, a DSN-like bounce so the whole ingest path runs.
fn message(c: usize, n: usize) -> Vec<u8> {
    format!(
        "From: MAILER-DAEMON@mx.example.net\r\nTo: bounces@example.com\r\nSubject: Undelivered mail {c}-{n}\r\n\
         Message-ID: <durability-{c}-{n}@mx.example.net>\r\n\r\n<user{c}x{n}@example.net>: host \
         mx.example.net[192.0.2.1] said: 550 5.1.1 <user{c}x{n}@example.net>: Recipient address rejected: \
         User unknown\r\n"
    )
    .into_bytes()
}

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What the clients and the killer share.
struct Shared {
    /// Where the server listens now; `None` while it is down.
    addr: Mutex<Option<SocketAddr>>,
    /// The current round (0-based); the final drain is round `rounds`.
    round: AtomicUsize,
    /// Messages whose data was sent (final dot), per round.
    sent: Vec<AtomicU64>,
    /// 250 answers received, per round.
    acked: Vec<AtomicU64>,
    /// 451 (or other 4xx) answers received, per round.
    deferred: Vec<AtomicU64>,
    /// sha256 of every message acknowledged with 250.
    acknowledged: Mutex<HashSet<String>>,
    /// Anything a correct server must never do (5xx, malformed replies).
    violations: Mutex<Vec<String>>,
    /// Clients still working.
    running: AtomicUsize,
    /// Set when the test gives up.
    abort: AtomicBool,
}

/// One LMTP connection that reports every failure as `Err` instead of panicking: the server may die at any
/// byte.
struct Conn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let reader = BufReader::new(stream.try_clone()?);
        let mut conn = Conn { stream, reader };
        conn.expect(220)?;
        conn.stream.write_all(b"LHLO durability.test\r\n")?;
        conn.expect(250)?;
        Ok(conn)
    }

    /// The code of the next (possibly multi-line) reply.
    fn reply(&mut self) -> std::io::Result<u16> {
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

    fn expect(&mut self, code: u16) -> std::io::Result<()> {
        match self.reply()? {
            c if c == code => Ok(()),
            c => Err(std::io::Error::other(format!("expected {code}, got {c}"))),
        }
    }

    /// One transaction, pipelined as Postfix does; the DATA reply code. `on_sent` runs once the final dot
    /// is written.
    fn deliver(&mut self, from: &str, data: &[u8], on_sent: impl FnOnce()) -> std::io::Result<u16> {
        self.stream.write_all(format!("MAIL FROM:<{from}>\r\nRCPT TO:<bounces@example.com>\r\nDATA\r\n").as_bytes())?;
        self.expect(250)?;
        self.expect(250)?;
        self.expect(354)?;
        self.stream.write_all(data)?;
        on_sent();
        self.reply()
    }
}

/// Client `c`: deliver each of its messages, retrying until 250.
fn client(c: usize, per_client: usize, shared: &Shared) {
    let mut conn: Option<Conn> = None;
    for n in 0..per_client {
        let raw = message(c, n);
        let data = dot_stuff(&raw);
        let sha = sha_hex(&raw);
        let from = format!("bounce-{c}-{n}@example.com");
        loop {
            if shared.abort.load(Ordering::Relaxed) {
                return;
            }
            if conn.is_none() {
                let addr = *shared.addr.lock().unwrap();
                conn = addr.and_then(|a| Conn::open(a).ok());
                if conn.is_none() {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            }
            let round = shared.round.load(Ordering::Relaxed);
            let result = conn.as_mut().unwrap().deliver(&from, &data, || {
                shared.sent[round].fetch_add(1, Ordering::Relaxed);
            });
            let round = shared.round.load(Ordering::Relaxed);
            match result {
                Ok(250) => {
                    shared.acked[round].fetch_add(1, Ordering::Relaxed);
                    shared.acknowledged.lock().unwrap().insert(sha);
                    break;
                }
                Ok(code) if (400..500).contains(&code) => {
                    // A temporary failure: the MTA keeps the message and tries again later.
                    shared.deferred[round].fetch_add(1, Ordering::Relaxed);
                    conn = None;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(code) => {
                    shared.violations.lock().unwrap().push(format!("message {c}-{n} answered {code}"));
                    conn = None;
                }
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    shared.violations.lock().unwrap().push(format!("message {c}-{n}: {e}"));
                    conn = None;
                }
                // Connection refused, reset or closed: the server died; reconnect and send again.
                Err(_) => conn = None,
            }
        }
    }
    if let Some(mut conn) = conn {
        let _ = conn.stream.write_all(b"QUIT\r\n");
    }
}

/// sha256 → number of rows, for every stored message.
fn stored(url: &str) -> HashMap<String, i64> {
    let sql = "SELECT sha256, COUNT(*) FROM messages GROUP BY sha256";
    block_on(async {
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

/// Each acknowledged message is stored once; returns how many rows there are.
fn check_acknowledged(url: &str, shared: &Shared, when: &str) -> usize {
    let rows = stored(url);
    let acknowledged = shared.acknowledged.lock().unwrap().clone();
    let lost: Vec<&String> = acknowledged.iter().filter(|sha| !rows.contains_key(*sha)).collect();
    assert!(lost.is_empty(), "{when}: {} acknowledged messages are not in the database, e.g. {:?}", lost.len(), lost[0]);
    let doubled: Vec<(&String, &i64)> = rows.iter().filter(|(_, n)| **n != 1).collect();
    assert!(doubled.is_empty(), "{when}: messages stored more than once: {doubled:?}");
    rows.len()
}

/// The kill -9 loop against the database at `url`.
fn kill_rounds(dir: &Path, url: &str, label: &str) {
    let seed = env_or("REBOUND_DURABILITY_SEED", 4);
    let per_client = env_or("REBOUND_DURABILITY_MESSAGES", 250) as usize;
    let rounds = env_or("REBOUND_DURABILITY_ROUNDS", 10) as usize;
    let mut rng = StdRng::seed_from_u64(seed);
    eprintln!("durability ({label}): seed {seed}, {CLIENTS} clients x {per_client} messages, {rounds} kill rounds");
    let counters = || (0..=rounds).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
    let shared = Arc::new(Shared {
        addr: Mutex::new(None),
        round: AtomicUsize::new(0),
        sent: counters(),
        acked: counters(),
        deferred: counters(),
        acknowledged: Mutex::new(HashSet::new()),
        violations: Mutex::new(Vec::new()),
        running: AtomicUsize::new(CLIENTS),
        abort: AtomicBool::new(false),
    });
    let start = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let shared = shared.clone();
            std::thread::spawn(move || {
                client(c, per_client, &shared);
                shared.running.fetch_sub(1, Ordering::Relaxed);
            })
        })
        .collect();
    // Quiet logs (debug logging would slow the server down), but the start-up line names the port.
    let launch = || Server::launch(dir, url, "", "", "warn,rebound::serve=info");

    let mut kills = 0;
    for round in 0..=rounds {
        let mut server = launch();
        *shared.addr.lock().unwrap() = Some(server.addr);
        let last = round == rounds;
        if last {
            // Final round: no kill; let every client finish.
            while shared.running.load(Ordering::Relaxed) > 0 {
                if start.elapsed() > DEADLINE {
                    shared.abort.store(true, Ordering::Relaxed);
                    panic!("durability ({label}): clients not done after {DEADLINE:?}; log:\n{}", server.log());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        } else {
            std::thread::sleep(Duration::from_millis(rng.gen_range(150..1200)));
        }
        *shared.addr.lock().unwrap() = None;
        server.signal("KILL");
        let status = server.wait(Duration::from_secs(10)).expect("server did not die on SIGKILL");
        if !last {
            kills += 1;
            assert!(status.code().is_none(), "the server exited by itself before the kill: {status:?}\n{}", server.log());
        }
        shared.round.store(round + 1, Ordering::Relaxed);
        let rows = check_acknowledged(url, &shared, &format!("after round {round}"));
        // Committed but killed before the 250 went out: the client resends, and gets 250 for the copy.
        let unanswered = rows - shared.acknowledged.lock().unwrap().len();
        eprintln!(
            "durability ({label}) round {round:>2}{}: sent {:>4}  acknowledged {:>4}  deferred {:>3}  \
             stored (total) {:>5}  stored but unanswered {:>2}  [{:.1}s]",
            if last { " (drain)" } else { "" },
            shared.sent[round].load(Ordering::Relaxed),
            shared.acked[round].load(Ordering::Relaxed),
            shared.deferred[round].load(Ordering::Relaxed),
            rows,
            unanswered,
            start.elapsed().as_secs_f64()
        );
    }
    for t in threads {
        t.join().unwrap();
    }
    let violations = shared.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "answers a correct server never gives: {violations:?}");

    // Every message, acknowledged or not, was retried until stored, and is there exactly once.
    let total = CLIENTS * per_client;
    let rows = stored(url);
    let expected: HashSet<String> =
        (0..CLIENTS).flat_map(|c| (0..per_client).map(move |n| sha_hex(&message(c, n)))).collect();
    let missing = expected.iter().filter(|sha| !rows.contains_key(*sha)).count();
    assert_eq!(missing, 0, "{missing} of {total} messages never stored");
    assert_eq!(rows.len(), total, "rows that are none of the messages sent");
    assert!(rows.values().all(|n| *n == 1), "a message stored twice");
    assert_eq!(shared.acknowledged.lock().unwrap().len(), total);
    if url.starts_with("sqlite:") {
        let check: String = block_on(async {
            let pool = sqlx::SqlitePool::connect(url).await.unwrap();
            let v = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&pool).await.unwrap();
            pool.close().await;
            v
        });
        assert_eq!(check, "ok", "SQLite integrity check after {kills} kills");
    }
    let sent: u64 = shared.sent.iter().map(|s| s.load(Ordering::Relaxed)).sum();
    let deferred: u64 = shared.deferred.iter().map(|s| s.load(Ordering::Relaxed)).sum();
    eprintln!(
        "durability ({label}): {kills} kills, {total} messages, {sent} data transfers ({} resent), {deferred} \
         answered 4xx, {total} acknowledged, {} stored once each, {:.1}s",
        sent as usize - total,
        rows.len(),
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn every_acknowledged_message_survives_kill_9_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::sqlite_url(dir.path());
    kill_rounds(dir.path(), &url, "sqlite");
}

#[test]
fn every_acknowledged_message_survives_kill_9_on_postgres() {
    let Some(schema) = common::postgres_schema("durability") else { return };
    let dir = tempfile::tempdir().unwrap();
    kill_rounds(dir.path(), &schema.url, "postgres");
}
