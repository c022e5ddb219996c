//! The Postfix policy server over a real socket, resolving through a real DNS server on 127.0.0.1
//! (tests/spf_support), and every check landing in `spf_checks` of a real SQLite database.

mod spf_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rebound::report::queue::run_writer;
use rebound::spf::Verifier;
use rebound::spf::config::PolicyMode;
use rebound::spf::dns::{DnsOptions, DnsResolver, DnsServers};
use rebound::spf::policy::{CheckEvent, PolicyService, PolicySettings};
use rebound::store::Store;
use spf_support::{DnsServer, Rec, start, txt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// One `spf_checks` row as the test reads it: client_ip, identity, domain, result, mechanism, action.
type CheckRow = (String, String, String, String, Option<String>, Option<String>);

async fn zone() -> DnsServer {
    start(&[
        ("example.com", txt("v=spf1 ip4:192.0.2.0/24 -all")),
        ("mail.example.com", txt("v=spf1 a -all")),
        ("mail.example.com", Rec::A("192.0.2.10")),
        ("slow.example.net", Rec::Timeout),
    ])
    .await
}

async fn server(dns: &DnsServer, helo: PolicyMode, mail_from: PolicyMode, events: Option<mpsc::Sender<CheckEvent>>) -> SocketAddr {
    server_with(dns, helo, mail_from, events, Duration::from_secs(300), Duration::from_secs(30)).await
}

async fn server_with(
    dns: &DnsServer,
    helo: PolicyMode,
    mail_from: PolicyMode,
    events: Option<mpsc::Sender<CheckEvent>>,
    idle: Duration,
    request: Duration,
) -> SocketAddr {
    let options = DnsOptions {
        servers: DnsServers::List(vec![dns.addr]),
        timeout: Duration::from_millis(300),
        attempts: 1,
        ..DnsOptions::default()
    };
    let verifier = Verifier::new(DnsResolver::new(&options).unwrap(), "mx.test.example");
    let settings = PolicySettings {
        helo,
        mail_from,
        auth_serv_id: "mx.test.example".into(),
        trusted: vec!["198.51.100.0/24".parse().unwrap()],
    };
    let service = Arc::new(PolicyService::new(verifier, settings, events).with_timeouts(idle, request));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(service.serve(listener, std::future::pending()));
    addr
}

struct Client {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
        Client { reader: BufReader::new(r), writer: w }
    }

    /// Sends raw bytes and reads one answer (its `action=` value), or None when the server closed.
    async fn raw(&mut self, bytes: &[u8]) -> Option<String> {
        self.writer.write_all(bytes).await.ok()?;
        let mut action = None;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
            if line == "\n" {
                return action;
            }
            action = line.trim_end().strip_prefix("action=").map(str::to_string);
        }
    }

    async fn ask(&mut self, state: &str, ip: &str, helo: &str, sender: &str, instance: &str) -> String {
        let req = format!(
            "request=smtpd_access_policy\nprotocol_state={state}\nprotocol_name=ESMTP\nclient_address={ip}\n\
             client_name=unknown\nhelo_name={helo}\nsender={sender}\nrecipient=user@ours.example\n\
             instance={instance}\nqueue_id=\n\n"
        );
        self.raw(req.as_bytes()).await.expect("an answer")
    }
}

#[tokio::test]
async fn relaxed_prepends_received_spf_then_authentication_results_at_data() {
    let dns = zone().await;
    let addr = server(&dns, PolicyMode::Relaxed, PolicyMode::Relaxed, None).await;
    let mut c = Client::connect(addr).await;
    let first = c.ask("RCPT", "203.0.113.7", "mail.example.com", "someone@example.com", "a1").await;
    assert!(first.starts_with("PREPEND Received-SPF: fail (mx.test.example: domain of someone@example.com"), "{first}");
    assert!(first.contains("client-ip=203.0.113.7;") && first.contains("mechanism=-all;") && first.contains("identity=mailfrom"), "{first}");
    // The same transaction's next recipient gets no second header.
    assert_eq!(c.ask("RCPT", "203.0.113.7", "mail.example.com", "someone@example.com", "a1").await, "DUNNO");
    let data = c.ask("DATA", "203.0.113.7", "mail.example.com", "someone@example.com", "a1").await;
    assert_eq!(
        data,
        "PREPEND Authentication-Results: mx.test.example; spf=fail smtp.helo=mail.example.com; spf=fail smtp.mailfrom=someone@example.com"
    );
    let pass = c.ask("RCPT", "192.0.2.10", "mail.example.com", "someone@example.com", "a2").await;
    assert!(pass.starts_with("PREPEND Received-SPF: pass "), "{pass}");
}

#[tokio::test]
async fn strict_rejects_fail_and_defers_temperror() {
    let dns = zone().await;
    let addr = server(&dns, PolicyMode::Relaxed, PolicyMode::Strict, None).await;
    let mut c = Client::connect(addr).await;
    let fail = c.ask("RCPT", "203.0.113.7", "mail.example.com", "someone@example.com", "b1").await;
    assert!(fail.starts_with("550 5.7.23 "), "{fail}");
    // Every recipient of that transaction gets the same answer.
    assert_eq!(c.ask("RCPT", "203.0.113.7", "mail.example.com", "someone@example.com", "b1").await, fail);
    let temp = c.ask("RCPT", "203.0.113.7", "mail.example.com", "someone@slow.example.net", "b2").await;
    assert!(temp.starts_with("451 4.7.24 "), "{temp}");
    let pass = c.ask("RCPT", "192.0.2.44", "mail.example.com", "someone@example.com", "b3").await;
    assert!(pass.starts_with("PREPEND Received-SPF: pass"), "{pass}");
    // HELO strict: the HELO identity fails first.
    let helo_strict = server(&dns, PolicyMode::Strict, PolicyMode::Disable, None).await;
    let mut c = Client::connect(helo_strict).await;
    let helo_fail = c.ask("RCPT", "203.0.113.7", "mail.example.com", "", "c1").await;
    assert!(helo_fail.starts_with("550 5.7.23 SPF fail for HELO postmaster@mail.example.com"), "{helo_fail}");
    // The checks and their latency reach /metrics (other tests in this process only add to the counts).
    let metrics = rebound::metrics::render();
    let count = |line: &str| -> u64 {
        metrics.lines().find_map(|l| l.strip_prefix(line)).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
    };
    assert!(count("rebound_spf_results_total{identity=\"mail_from\",result=\"fail\"}") >= 1, "{metrics}");
    assert!(count("rebound_spf_results_total{identity=\"mail_from\",result=\"temperror\"}") >= 1, "{metrics}");
    assert!(count("rebound_policy_duration_seconds_count") >= 4, "{metrics}");
}

#[tokio::test]
async fn trusted_networks_and_disabled_checks_get_dunno() {
    let dns = zone().await;
    let addr = server(&dns, PolicyMode::Strict, PolicyMode::Strict, None).await;
    let mut c = Client::connect(addr).await;
    assert_eq!(c.ask("RCPT", "198.51.100.9", "mail.example.com", "someone@example.com", "d1").await, "DUNNO");
    let off = server(&dns, PolicyMode::Disable, PolicyMode::Disable, None).await;
    let mut c = Client::connect(off).await;
    assert_eq!(c.ask("RCPT", "203.0.113.7", "mail.example.com", "someone@example.com", "d2").await, "DUNNO");
}

#[tokio::test]
async fn malformed_requests_get_dunno_and_overlong_lines_close_the_connection() {
    let dns = zone().await;
    let addr = server(&dns, PolicyMode::Strict, PolicyMode::Strict, None).await;
    let mut c = Client::connect(addr).await;
    assert_eq!(c.raw(b"request=smtpd_access_policy\nthis line has no equals sign\n\n").await.as_deref(), Some("DUNNO"));
    assert_eq!(c.raw(b"request=something_else\nclient_address=203.0.113.7\n\n").await.as_deref(), Some("DUNNO"));
    assert_eq!(c.raw(b"request=smtpd_access_policy\nclient_address=not-an-ip\n\n").await.as_deref(), Some("DUNNO"));
    // The connection still works after bad requests.
    assert!(c.ask("RCPT", "203.0.113.7", "mail.example.com", "someone@example.com", "e1").await.starts_with("550"));
    let mut huge = b"request=smtpd_access_policy\nsender=".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 1024 * 1024 + 16));
    huge.extend_from_slice(b"\n\n");
    assert_eq!(c.raw(&huge).await, None, "a line over 1 MiB closes the connection");
    // The server is still serving others.
    let mut other = Client::connect(addr).await;
    assert!(other.ask("RCPT", "192.0.2.10", "mail.example.com", "someone@example.com", "e2").await.starts_with("PREPEND"));
}

#[tokio::test]
async fn every_check_is_stored_in_spf_checks() {
    let dns = zone().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("rebound.db").display());
    let store = Store::open(&url).await.unwrap();
    let (tx, rx) = mpsc::channel(64);
    let writer = tokio::spawn(run_writer(store.clone(), rx, None));
    let addr = server(&dns, PolicyMode::Relaxed, PolicyMode::Relaxed, Some(tx)).await;
    let mut c = Client::connect(addr).await;
    c.ask("RCPT", "203.0.113.7", "mail.example.com", "someone@example.com", "f1").await;
    c.ask("RCPT", "203.0.113.7", "mail.example.com", "someone@example.com", "f1").await;
    c.ask("RCPT", "192.0.2.10", "mail.example.com", "", "f2").await;
    let pool = store.sqlite_pool().unwrap();
    let mut rows: Vec<CheckRow> = Vec::new();
    for _ in 0..50 {
        rows = sqlx::query_as(
            "SELECT client_ip, identity, domain, result, mechanism, action FROM spf_checks ORDER BY id",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        if rows.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rows.len(), 4, "two checks of two identities each (the repeated recipient is not re-checked): {rows:?}");
    assert_eq!(rows[0].1, "helo");
    assert_eq!((rows[1].1.as_str(), rows[1].2.as_str(), rows[1].3.as_str()), ("mail_from", "example.com", "fail"));
    assert_eq!(rows[1].4.as_deref(), Some("-all"));
    assert!(rows[1].5.as_deref().unwrap().starts_with("PREPEND Received-SPF: fail"));
    assert_eq!((rows[3].2.as_str(), rows[3].3.as_str()), ("mail.example.com", "pass"));
    writer.abort();
}

#[tokio::test]
async fn slow_and_idle_clients_are_disconnected() {
    let dns = zone().await;
    let addr = server_with(&dns, PolicyMode::Relaxed, PolicyMode::Relaxed, None, Duration::from_millis(400), Duration::from_millis(200)).await;
    // Slowloris: a request begun and never finished.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"request=smtpd_access_policy\nclient_add").await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut slow, &mut buf)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "the server closes a stalled request: {n:?}");
    // Idle: a connection that never sends anything.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut idle, &mut buf)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "the server closes an idle connection: {n:?}");
    // Meanwhile a well-behaved client is served.
    let mut c = Client::connect(addr).await;
    assert!(c.ask("RCPT", "192.0.2.10", "mail.example.com", "someone@example.com", "g1").await.starts_with("PREPEND"));
}
