//! A relay that misbehaves (issue 4): reports are queued in a real SQLite outbox through the store (the
//! same call the policy server's writer makes), and the real sender delivers them over SMTP to a relay on
//! 127.0.0.1 (tests/spf_support's sink with a fault switch) that, attempt after attempt, refuses service with 421, refuses it with 554, accepts the
//! connection and never answers (the sender's timeout must fire), and drops the connection in the middle
//! of DATA. Each time the reports stay queued with the attempt recorded; once the relay behaves they are
//! delivered, each exactly once. A 5xx about the recipient itself (550 to RCPT) stays final.

mod spf_support;

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rebound::report::config::SmtpConfig;
use rebound::report::sender::Sender;
use rebound::store::Store;
use rebound::store::spf::{CheckItem, ReportToQueue};
use spf_support::{Fault, queue_answer, smtp_relay};

/// Queue a report to `address` with its check, as the policy server's writer does.
async fn queue_report(store: &Store, address: &str, n: usize) {
    let row = spf_support::failed_check("example.com", &format!("someone{n}@example.com"));
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

/// Rounds of the sender until nothing is due; how many reports were attempted. Bounded, so a sender that
/// waits forever fails the test instead of hanging it.
async fn attempt_all(sender: &Sender) -> usize {
    tokio::time::timeout(Duration::from_secs(90), async {
        let mut n = 0;
        loop {
            match sender.round().await {
                0 => return n,
                k => n += k,
            }
        }
    })
    .await
    .expect("the sender never finished its rounds")
}

#[tokio::test]
async fn reports_stay_queued_through_relay_faults_and_go_once_the_relay_behaves() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("r.db").display())).await.unwrap();
    const REPORTS: usize = 3;
    for n in 0..REPORTS {
        queue_report(&store, &format!("spf-reports{n}@example.com"), n).await;
    }
    let mode = Arc::new(Mutex::new(Fault::Busy));
    let relay = smtp_relay(queue_answer(Arc::default()), Duration::ZERO, mode.clone()).await;
    let inbox = relay.inbox.clone();
    let smtp = SmtpConfig { relay: relay.addr.to_string(), timeout_secs: 1, ..SmtpConfig::default() };
    let sender = Sender::new(store.clone(), &smtp, "reports@ours.example", 10, Arc::new(AtomicBool::new(true))).unwrap();

    let faults = [Fault::Busy, Fault::NoService, Fault::Hang, Fault::DropInData];
    for (i, fault) in faults.into_iter().enumerate() {
        *mode.lock().unwrap() = fault;
        due_now(&store).await;
        let started = Instant::now();
        assert_eq!(attempt_all(&sender).await, REPORTS, "{fault:?}: every due report is attempted");
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
        if fault == Fault::Hang {
            // The connect succeeds and the greeting never comes: each attempt is abandoned after 5 x the
            // 1 s step timeout.
            assert!(took >= Duration::from_secs(5) && took < Duration::from_secs(30), "{took:?}");
        }
    }

    *mode.lock().unwrap() = Fault::None;
    due_now(&store).await;
    assert_eq!(attempt_all(&sender).await, REPORTS);
    let inbox = inbox.lock().unwrap().clone();
    let mut to: Vec<&str> = inbox.iter().map(|(_, t, _)| t.as_str()).collect();
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
    let relay = smtp_relay(queue_answer(Arc::new(Mutex::new(VecDeque::from([550u16])))), Duration::ZERO, Arc::default()).await;
    let inbox = relay.inbox.clone();
    let smtp = SmtpConfig { relay: relay.addr.to_string(), timeout_secs: 1, ..SmtpConfig::default() };
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
