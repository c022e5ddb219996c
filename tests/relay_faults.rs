//! A relay that misbehaves (issue 4): reports are queued in a real SQLite outbox through the store (the
//! same call the policy server's writer makes), and the real sender delivers them over SMTP to a relay on
//! 127.0.0.1 that, attempt after attempt, refuses service with 421, refuses it with 554, accepts the
//! connection and never answers (the sender's timeout must fire), and drops the connection in the middle
//! of DATA. Each time the reports stay queued with the attempt recorded; once the relay behaves they are
//! delivered, each exactly once. A 5xx about the recipient itself (550 5.1.1) stays final.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use rebound::report::config::SmtpConfig;
use rebound::report::sender::Sender;
use rebound::store::Store;
use rebound::store::spf::{CheckItem, ReportToQueue, SpfCheckRow};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// How the relay behaves on the next connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `421 4.3.2` at the greeting.
    Busy,
    /// `554 5.3.2` at the greeting: no service for us.
    NoService,
    /// Accepts the connection, says nothing.
    Hang,
    /// Takes part of the data after 354, then closes the connection.
    DropInData,
    /// `550 5.1.1` to RCPT: the recipient does not exist.
    UnknownRecipient,
    /// Accepts everything.
    Good,
}

/// What the relay received: (RCPT TO, DATA) of each message it accepted.
type Inbox = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An SMTP relay on 127.0.0.1 whose behaviour the test switches.
async fn relay(mode: Arc<Mutex<Mode>>) -> (std::net::SocketAddr, Inbox) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let inbox: Inbox = Arc::default();
    let received = inbox.clone();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else { return };
            let mode = *mode.lock().unwrap();
            let inbox = received.clone();
            tokio::spawn(async move {
                let (r, mut w) = conn.into_split();
                let mut r = BufReader::new(r);
                let greeting: &[u8] = match mode {
                    Mode::Busy => b"421 4.3.2 relay.test busy, try again later\r\n",
                    Mode::NoService => b"554 5.3.2 relay.test: no SMTP service for you\r\n",
                    Mode::Hang => {
                        // Hold the connection open, silent, until the client gives up.
                        let mut sink = Vec::new();
                        let _ = tokio::io::AsyncReadExt::read_to_end(&mut r, &mut sink).await;
                        return;
                    }
                    _ => b"220 relay.test ESMTP\r\n",
                };
                if w.write_all(greeting).await.is_err() || !greeting.starts_with(b"220") {
                    return;
                }
                let mut to = String::new();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let upper = line.to_ascii_uppercase();
                    let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                        b"250-relay.test\r\n250 8BITMIME\r\n"
                    } else if upper.starts_with("RCPT TO:") {
                        to = line[8..].trim().to_string();
                        if mode == Mode::UnknownRecipient { b"550 5.1.1 no such user\r\n" } else { b"250 ok\r\n" }
                    } else if upper.starts_with("DATA") {
                        let _ = w.write_all(b"354 go ahead\r\n").await;
                        let mut data = Vec::new();
                        loop {
                            let mut l = Vec::new();
                            if r.read_until(b'\n', &mut l).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if mode == Mode::DropInData && data.len() > 200 {
                                // Cut off: the client sees the connection close before the final reply.
                                return;
                            }
                            if l == b".\r\n" {
                                break;
                            }
                            data.extend_from_slice(if l.starts_with(b"..") { &l[1..] } else { &l });
                        }
                        inbox.lock().unwrap().push((to.clone(), data));
                        b"250 2.0.0 queued\r\n"
                    } else if upper.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    if w.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, inbox)
}

/// Queue a report to `address` with its check, as the policy server's writer does.
async fn queue_report(store: &Store, address: &str, n: usize) {
    let row = SpfCheckRow {
        checked_at: Utc::now(),
        client_ip: "203.0.113.9".into(),
        client_name: None,
        helo: Some("bad.example.net".into()),
        mail_from: Some(format!("someone{n}@example.com")),
        rcpt_to: Some("victim@ours.example".into()),
        queue_id: None,
        identity: "mail_from",
        domain: "example.com".into(),
        result: "fail",
        explanation: None,
        record: Some("v=spf1 -all".into()),
        mechanism: Some("-all".into()),
        action: Some("PREPEND".into()),
    };
    let message = format!(
        "From: reports@ours.example\r\nTo: {address}\r\nSubject: SPF failure report {n}\r\n\r\n{}\r\n",
        "An SPF failure report body line.\r\n".repeat(20)
    );
    let report = ReportToQueue {
        row: 0,
        kind: "spf-failure",
        domain: "example.com".into(),
        address: address.into(),
        mail_from: format!("someone{n}@example.com"),
        message: message.into_bytes(),
        per_address: 100,
        period: Duration::from_secs(86_400),
        max_per_hour: 1000,
    };
    store.save_spf_checks(&[CheckItem { rows: vec![row], reports: vec![report] }]).await.unwrap();
}

async fn count(store: &Store, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(store.sqlite_pool().unwrap()).await.unwrap()
}

/// Make every queued report due now (instead of waiting for the backoff).
async fn due_now(store: &Store) {
    sqlx::query("UPDATE outgoing_reports SET next_attempt_at = datetime('now', '-1 second') WHERE status = 'queued'")
        .execute(store.sqlite_pool().unwrap())
        .await
        .unwrap();
}

/// Sender rounds until nothing is due (a round claims one report); returns the reports attempted.
async fn rounds(sender: &Sender) -> usize {
    let mut attempted = 0;
    loop {
        match sender.round().await {
            0 => return attempted,
            n => attempted += n,
        }
    }
}

#[tokio::test]
async fn reports_stay_queued_through_relay_faults_and_go_once_the_relay_behaves() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("r.db").display())).await.unwrap();
    const REPORTS: usize = 3;
    for n in 0..REPORTS {
        queue_report(&store, &format!("spf-reports{n}@example.com"), n).await;
    }
    let mode = Arc::new(Mutex::new(Mode::Busy));
    let (addr, inbox) = relay(mode.clone()).await;
    let smtp = SmtpConfig { relay: addr.to_string(), timeout_secs: 1, ..SmtpConfig::default() };
    let sender = Sender::new(store.clone(), &smtp, "reports@ours.example", 10, Arc::new(AtomicBool::new(true))).unwrap();

    let faults = [Mode::Busy, Mode::NoService, Mode::Hang, Mode::DropInData];
    for (i, fault) in faults.into_iter().enumerate() {
        *mode.lock().unwrap() = fault;
        due_now(&store).await;
        let started = Instant::now();
        // Bounded, so a sender that waits forever fails the test instead of hanging it.
        let attempted = tokio::time::timeout(Duration::from_secs(60), rounds(&sender)).await.expect("the rounds never ended");
        assert_eq!(attempted, REPORTS, "{fault:?}: every due report is attempted");
        let took = started.elapsed();
        let attempts = i as i64 + 1;
        assert!(inbox.lock().unwrap().is_empty(), "{fault:?}: nothing delivered");
        let queued = format!("SELECT COUNT(*) FROM outgoing_reports WHERE status = 'queued' AND attempts = {attempts}");
        assert_eq!(count(&store, &queued).await, REPORTS as i64, "{fault:?}: the reports stay queued");
        let recorded = "SELECT COUNT(*) FROM report_attempts WHERE outcome = 'temporary'";
        assert_eq!(count(&store, recorded).await, REPORTS as i64 * attempts, "{fault:?}: every attempt recorded");
        // Retried later, not at once: the backoff put the next attempt in the future.
        assert_eq!(sender.round().await, 0, "{fault:?}: nothing due before the backoff");
        let detail: String = sqlx::query_scalar("SELECT detail FROM report_attempts ORDER BY id DESC LIMIT 1")
            .fetch_one(store.sqlite_pool().unwrap())
            .await
            .unwrap();
        eprintln!("relay_faults: {fault:?}: {REPORTS} reports attempted in {took:.1?}, queued again: {detail}");
        if fault == Mode::Hang {
            // The connect succeeds and the greeting never comes: each attempt is abandoned after 5 x the
            // 1 s step timeout.
            assert!(took >= Duration::from_secs(5) && took < Duration::from_secs(30), "{took:?}");
        }
    }

    *mode.lock().unwrap() = Mode::Good;
    due_now(&store).await;
    assert_eq!(rounds(&sender).await, REPORTS);
    let inbox = inbox.lock().unwrap().clone();
    let mut to: Vec<&str> = inbox.iter().map(|(t, _)| t.as_str()).collect();
    to.sort_unstable();
    assert_eq!(to, ["<spf-reports0@example.com>", "<spf-reports1@example.com>", "<spf-reports2@example.com>"]);
    let sent = "SELECT COUNT(*) FROM outgoing_reports WHERE status = 'sent' AND attempts = 5 AND sent_at IS NOT NULL";
    assert_eq!(count(&store, sent).await, REPORTS as i64);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM report_attempts").await, REPORTS as i64 * 5);
    // Sent once: nothing is claimed again.
    due_now(&store).await;
    assert_eq!(sender.round().await, 0);
}

#[tokio::test]
async fn a_recipient_the_relay_says_does_not_exist_is_final() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("r.db").display())).await.unwrap();
    queue_report(&store, "nobody@example.com", 0).await;
    let (addr, inbox) = relay(Arc::new(Mutex::new(Mode::UnknownRecipient))).await;
    let smtp = SmtpConfig { relay: addr.to_string(), timeout_secs: 1, ..SmtpConfig::default() };
    let sender = Sender::new(store.clone(), &smtp, "reports@ours.example", 10, Arc::new(AtomicBool::new(true))).unwrap();
    assert_eq!(sender.round().await, 1);
    assert!(inbox.lock().unwrap().is_empty());
    let failed = "SELECT COUNT(*) FROM outgoing_reports WHERE status = 'failed' AND attempts = 1";
    assert_eq!(count(&store, failed).await, 1);
    let permanent = "SELECT COUNT(*) FROM report_attempts WHERE outcome = 'permanent' AND smtp_code = 550";
    assert_eq!(count(&store, permanent).await, 1);
    due_now(&store).await;
    assert_eq!(sender.round().await, 0, "a final failure is not retried");
}
