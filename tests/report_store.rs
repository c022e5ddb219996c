//! The store side of SPF reports on both backends (SQLite always; Postgres at
//! `REBOUND_TEST_POSTGRES_URL`, in a schema of its own, dropped afterwards): checks and report in one
//! transaction, the per-address rate and the global hourly cap held in the database, claims that never
//! hand one report to two senders at once, attempts recorded.

use std::time::Duration;

use chrono::Utc;
use rebound::store::spf::{AttemptOutcome, CheckItem, Queued, ReportToQueue, SpfCheckRow};
use rebound::store::Store;

mod common;
mod spf_support;

use common::db::{TestDb, scalar};

fn row(n: usize) -> SpfCheckRow {
    SpfCheckRow {
        client_ip: format!("203.0.113.{}", n % 250),
        rcpt_to: Some("u@ours.example".into()),
        record: Some("v=spf1 -all ra=r".into()),
        action: Some("DUNNO".into()),
        ..spf_support::failed_check("example.com", "x@example.com")
    }
}

fn report(address: &str, per_address: u32, max_per_hour: u32) -> ReportToQueue {
    ReportToQueue {
        row: 0,
        kind: "spf-failure",
        domain: "example.com".into(),
        address: address.into(),
        mail_from: "x@example.com".into(),
        message: b"Subject: report\r\n\r\nbody\r\n".to_vec(),
        per_address,
        period: Duration::from_secs(86_400),
        max_per_hour,
    }
}

async fn exercise(store: &Store) {
    // Three checks for one address, rate 2 per day: two reports, then rate-limited.
    let mut outcomes = Vec::new();
    for n in 0..3 {
        let item = CheckItem { rows: vec![row(n)], reports: vec![report("r@example.com", 2, 100)] };
        outcomes.extend(store.save_spf_checks(&[item]).await.unwrap());
    }
    assert!(matches!(outcomes[0].1[..], [Queued::Queued(_)]));
    assert!(matches!(outcomes[1].1[..], [Queued::Queued(_)]));
    assert_eq!(outcomes[2].1, [Queued::RateLimited]);
    assert_eq!(outcomes.iter().map(|(ids, _)| ids.len()).sum::<usize>(), 3, "every check is stored");
    assert_eq!(store.reports_used(&report("r@example.com", 2, 100)).await.unwrap(), 2);
    // The global cap: 3 per hour in all; two used above.
    let batch: Vec<CheckItem> = (0..3)
        .map(|n| CheckItem { rows: vec![row(n)], reports: vec![report(&format!("a{n}@example.org"), 5, 3)] })
        .collect();
    let results = store.save_spf_checks(&batch).await.unwrap();
    assert!(matches!(results[0].1[..], [Queued::Queued(_)]));
    assert_eq!(results[1].1, [Queued::HourlyCap]);
    assert_eq!(results[2].1, [Queued::HourlyCap]);
    // An address refused by the hourly cap keeps its share: nothing was taken from it.
    assert_eq!(store.reports_used(&report("a1@example.org", 5, 3)).await.unwrap(), 0);

    // A sender of mailed digests alone (serve with SPF reports off) leaves the SPF reports queued.
    let digests_only = store.claim_reports("sender-d", Some("digest"), 10, Duration::from_secs(300)).await.unwrap();
    assert!(digests_only.is_empty(), "claimed SPF reports for digests only: {digests_only:?}");

    // Two senders claim at the same time: each report goes to exactly one.
    let (a, b) = tokio::join!(
        store.claim_reports("sender-a", None, 10, Duration::from_secs(300)),
        store.claim_reports("sender-b", None, 10, Duration::from_secs(300))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut ids: Vec<i64> = a.iter().chain(b.iter()).map(|r| r.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    assert_eq!(a.len() + b.len(), 3);
    assert!(store.claim_reports("sender-c", None, 10, Duration::from_secs(300)).await.unwrap().is_empty());

    let first = ids[0];
    let later = Utc::now() + chrono::Duration::minutes(1);
    store.record_report_attempt(first, AttemptOutcome::Temporary, Some(451), "451 4.0.0 not now", 12, Some(later)).await.unwrap();
    assert!(store.claim_reports("sender-a", None, 10, Duration::from_secs(300)).await.unwrap().is_empty(), "not due yet");
    store.record_report_attempt(ids[1], AttemptOutcome::Sent, Some(250), "ok", 5, None).await.unwrap();
    store.record_report_attempt(ids[2], AttemptOutcome::Permanent, Some(550), "550 no", 5, None).await.unwrap();
}

async fn check_counts(store: &Store) {
    assert_eq!(scalar(store, "SELECT COUNT(*) FROM spf_checks").await, 6);
    assert_eq!(scalar(store, "SELECT COUNT(*) FROM outgoing_reports").await, 3);
    assert_eq!(scalar(store, "SELECT COUNT(*) FROM outgoing_reports WHERE check_id IS NOT NULL").await, 3);
    assert_eq!(scalar(store, "SELECT COUNT(*) FROM report_attempts").await, 3);
    assert_eq!(scalar(store, "SELECT COUNT(*) FROM outgoing_reports WHERE status = 'queued' AND attempts = 1").await, 1);
    assert_eq!(scalar(store, "SELECT COUNT(*) FROM outgoing_reports WHERE status = 'sent'").await, 1);
    assert_eq!(scalar(store, "SELECT COUNT(*) FROM outgoing_reports WHERE status = 'failed'").await, 1);
}

/// The per-address rate, the hourly cap and claims (FOR UPDATE SKIP LOCKED on Postgres), on one backend.
async fn holds_limits_and_claims_once(db: &TestDb) {
    exercise(&db.store).await;
    check_counts(&db.store).await;
}

on_both_backends!(holds_limits_and_claims_once);
