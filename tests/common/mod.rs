//! Shared parts of the integration tests: the `rebound` binary run as a real server, a small LMTP client,
//! database look-ups with sqlx, and fresh Postgres schemas when `REBOUND_TEST_POSTGRES_URL` is set.
#![allow(dead_code)] // each test file uses a different part of this module

pub mod db;
pub mod load;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor};

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rebound"))
}

/// Directory of this crate's fixtures for ingest tests.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ingest")
}

/// `sqlite://` URL of a file in `dir`.
pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("rebound.db").display())
}

/// A `rebound serve` process on a free port of 127.0.0.1.
pub struct Server {
    child: Child,
    /// Where it listens for LMTP.
    pub addr: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Start `rebound serve` with a config of `url` and extra TOML lines for `[ingest.lmtp]`.
    pub fn start(dir: &Path, url: &str, lmtp_extra: &str) -> Server {
        Server::start_with(dir, url, "", lmtp_extra)
    }

    /// Like [`Server::start`], with extra lines for `[ingest]` too.
    pub fn start_with(dir: &Path, url: &str, ingest_extra: &str, lmtp_extra: &str) -> Server {
        Server::launch(dir, url, ingest_extra, lmtp_extra, "rebound=debug")
    }

    /// Start with the given `RUST_LOG` filter.
    pub fn launch(dir: &Path, url: &str, ingest_extra: &str, lmtp_extra: &str, log_filter: &str) -> Server {
        let text = format!(
            "[database]\nurl = \"{url}\"\n[ingest]\n{ingest_extra}\n[ingest.lmtp]\nlisten = \"127.0.0.1:0\"\n{lmtp_extra}\n"
        );
        Server::with_config(dir, &text, log_filter)
    }

    /// Start `rebound serve` on a new SQLite file in `dir` with its SPF policy server resolving through the
    /// DNS server `dns` (`HOST:PORT`), every client checked (no trusted networks); returns it and the
    /// policy server's address.
    pub fn with_policy_server(dir: &Path, dns: &str) -> (Server, SocketAddr) {
        Server::with_policy_server_config(dir, dns, "")
    }

    /// Like [`Server::with_policy_server`], with extra TOML lines for `[spf]`.
    pub fn with_policy_server_config(dir: &Path, dns: &str, spf_extra: &str) -> (Server, SocketAddr) {
        let config = format!(
            "[database]\nurl = \"{}\"\n[ingest.lmtp]\nlisten = \"127.0.0.1:0\"\n\
             [spf]\nlisten = \"127.0.0.1:0\"\ndns = [\"{dns}\"]\ntrusted_networks = []\n{spf_extra}\n",
            sqlite_url(dir)
        );
        let server = Server::with_config(dir, &config, "warn,rebound::serve=info,rebound::spf::server=info");
        let addr = server.logged_addr("spf policy server listening on ", Duration::from_secs(10)).expect("policy address");
        (server, addr)
    }

    /// Start `rebound serve` with the whole configuration `text` (written to `dir/rebound.toml`); its LMTP
    /// listener must be on 127.0.0.1.
    pub fn with_config(dir: &Path, text: &str, log_filter: &str) -> Server {
        let config = dir.join("rebound.toml");
        std::fs::write(&config, text).unwrap();
        let mut child = Command::new(bin())
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start rebound serve");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(i) = line.find("LMTP listening on ") {
                    let addr = line[i + "LMTP listening on ".len()..].split_whitespace().next().unwrap_or("");
                    let _ = tx.send(addr.parse::<SocketAddr>());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(addr)) => addr,
            other => {
                let _ = child.kill();
                panic!("rebound serve did not start ({other:?}); stderr:\n{}", stderr.lock().unwrap().join("\n"));
            }
        };
        Server { child, addr, stderr }
    }

    /// The address logged after `prefix` (e.g. `"spf policy server listening on "`), waiting up to
    /// `timeout` for the line.
    pub fn logged_addr(&self, prefix: &str, timeout: Duration) -> Option<SocketAddr> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            let found = self.stderr.lock().unwrap().iter().find_map(|line| {
                let i = line.find(prefix)?;
                line[i + prefix.len()..].split_whitespace().next()?.parse().ok()
            });
            if found.is_some() {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The first logged line containing `needle`, waiting up to `timeout` for it (the log is read on
    /// another thread, a moment after the server writes it).
    pub fn logged_line(&self, needle: &str, timeout: Duration) -> Option<String> {
        let start = Instant::now();
        loop {
            let found = self.stderr.lock().unwrap().iter().find(|line| line.contains(needle)).cloned();
            if found.is_some() || start.elapsed() >= timeout {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal by name (`TERM`, `INT`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status().unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Wait for the process to exit, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits (up to 20 s, then fails the test) until the log contains `needle`: the server may log an
    /// event just after the client saw its effect.
    pub fn wait_for_log(&self, needle: &str) {
        assert!(self.logged_line(needle, Duration::from_secs(20)).is_some(), "no {needle:?} in the log:\n{}", self.log());
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Files made immutable with `chattr +i` (which, unlike chmod, also stops root and a process that has
/// the file open already); `chattr -i` again when dropped, even when the test fails.
pub struct Immutable(Vec<PathBuf>);

impl Immutable {
    /// Make `files` immutable; `None` when chattr is missing or not permitted (needs root on ext4/xfs).
    pub fn set(files: Vec<PathBuf>) -> Option<Immutable> {
        let ok = Command::new("chattr").arg("+i").args(&files).status().is_ok_and(|s| s.success());
        let guard = Immutable(files);
        ok.then_some(guard)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").args(&self.0).status();
    }
}

/// One reply of the server: the code and the text of every line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// 250, 451, ...
    pub code: u16,
    /// The text after the code of each line.
    pub lines: Vec<String>,
}

impl Reply {
    /// All lines joined.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// A minimal LMTP client over a real socket.
pub struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    /// Connect and read the greeting.
    pub fn connect(addr: SocketAddr) -> (Client, Reply) {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut client = Client { stream, reader };
        let greeting = client.read_reply().expect("no greeting");
        (client, greeting)
    }

    /// Connect, check the greeting, say LHLO.
    pub fn ready(addr: SocketAddr) -> Client {
        let (mut client, greeting) = Client::connect(addr);
        assert_eq!(greeting.code, 220, "{greeting:?}");
        let lhlo = client.command("LHLO test.example");
        assert_eq!(lhlo.code, 250, "{lhlo:?}");
        client
    }

    /// Read one (possibly multi-line) reply; `None` when the server closed the connection.
    pub fn read_reply(&mut self) -> Option<Reply> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            let line = line.trim_end_matches(['\r', '\n']);
            let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("bad reply {line:?}"));
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_string());
            if !more {
                return Some(Reply { code, lines });
            }
        }
    }

    /// Send raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Send one command line and read its reply.
    pub fn command(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.read_reply().unwrap_or_else(|| panic!("connection closed after {line:?}"))
    }

    /// A whole transaction, one command at a time; returns the DATA replies (one per accepted recipient).
    pub fn deliver(&mut self, from: &str, rcpts: &[&str], message: &[u8]) -> Vec<Reply> {
        assert_eq!(self.command(&format!("MAIL FROM:<{from}>")).code, 250);
        for rcpt in rcpts {
            assert_eq!(self.command(&format!("RCPT TO:<{rcpt}>")).code, 250);
        }
        let data = self.command("DATA");
        assert_eq!(data.code, 354, "{data:?}");
        self.send(&dot_stuff(message));
        (0..rcpts.len()).map(|_| self.read_reply().expect("connection closed before a DATA reply")).collect()
    }

    /// A whole transaction the way a PIPELINING client (Postfix) sends it: MAIL, RCPT... and DATA in one
    /// write, then the data; returns the DATA replies.
    pub fn deliver_pipelined(&mut self, from: &str, rcpts: &[&str], message: &[u8]) -> Vec<Reply> {
        let mut group = format!("MAIL FROM:<{from}>\r\n");
        for rcpt in rcpts {
            group.push_str(&format!("RCPT TO:<{rcpt}>\r\n"));
        }
        group.push_str("DATA\r\n");
        self.send(group.as_bytes());
        for _ in 0..rcpts.len() + 1 {
            let reply = self.read_reply().expect("connection closed");
            assert!(reply.code == 250, "{reply:?}");
        }
        let data = self.read_reply().expect("connection closed");
        assert_eq!(data.code, 354, "{data:?}");
        self.send(&dot_stuff(message));
        (0..rcpts.len()).map(|_| self.read_reply().expect("connection closed before a DATA reply")).collect()
    }

    /// Whether the server closed the connection (reads to the end).
    pub fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).is_ok()
    }
}

/// The message as sent after DATA: CRLF line ends, leading dots doubled, `.` line at the end.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    let mut at_line_start = true;
    for &b in message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// A message with unique content, CRLF.
pub fn sample_message(n: usize) -> Vec<u8> {
    format!(
        "From: MAILER-DAEMON@mx.example.net\r\nTo: list@example.com\r\nSubject: Undeliverable {n}\r\n\
         Message-ID: <sample-{n}@mx.example.net>\r\n\r\n<user{n}@example.net>: host mx.example.net said: \
         550 5.1.1 user unknown\r\n"
    )
    .into_bytes()
}

/// Run a future on a fresh runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// One integer from a query, on SQLite or Postgres.
pub fn scalar(url: &str, sql: &str) -> i64 {
    block_on(async {
        if url.starts_with("sqlite:") {
            let pool = sqlx::SqlitePool::connect(url).await.unwrap();
            let v: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
            pool.close().await;
            v
        } else {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            let v: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
            pool.close().await;
            v
        }
    })
}

/// Rows of `messages`.
pub fn count_messages(url: &str) -> i64 {
    scalar(url, "SELECT COUNT(*) FROM messages")
}

/// A fresh Postgres schema for one test; dropped (with everything in it) when this is dropped.
pub struct PgSchema {
    /// A URL whose search_path is the schema.
    pub url: String,
    base: String,
    schema: String,
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (base, schema) = (self.base.clone(), self.schema.clone());
        // On its own thread: this may run inside a test's runtime.
        let dropped = std::thread::spawn(move || {
            block_on(async {
                let mut conn = sqlx::PgConnection::connect(&base).await.ok()?;
                // A failed test may leave a transaction of its own holding locks: give up rather than hang.
                conn.execute("SET lock_timeout = '5s'").await.ok()?;
                conn.execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str()).await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("warning: could not drop test schema {}", self.schema);
        }
    }
}

/// A new, empty Postgres schema; `None` (with the reason printed) when `REBOUND_TEST_POSTGRES_URL` is not
/// set. Declare it before a [`Server`] using it, so the server stops before the schema is dropped.
pub fn postgres_schema(test: &str) -> Option<PgSchema> {
    block_on(create_postgres_schema(test))
}

/// [`postgres_schema`] for async tests.
pub async fn create_postgres_schema(test: &str) -> Option<PgSchema> {
    let Ok(base) = std::env::var("REBOUND_TEST_POSTGRES_URL") else {
        eprintln!("skipping the Postgres part of {test}: REBOUND_TEST_POSTGRES_URL is not set");
        return None;
    };
    // Unique and within Postgres' 63-byte identifier limit: the test's name cut short, process id, a random suffix.
    let short: String = test.chars().take(30).collect::<String>().to_ascii_lowercase();
    let schema = format!("t_{short}_{}_{}", std::process::id(), rand_suffix());
    let mut admin = sqlx::PgConnection::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("REBOUND_TEST_POSTGRES_URL={} is set but unreachable: {e}", rebound::store::redact_url(&base)));
    admin.execute(format!("CREATE SCHEMA {schema}").as_str()).await.expect("create test schema");
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options[search_path]={schema}");
    Some(PgSchema { url, base, schema })
}

fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as u32
}
