//! The store against real databases: every shared test runs on a SQLite file in a temporary directory and on
//! the Postgres at `REBOUND_TEST_POSTGRES_URL` (in a schema of its own, dropped afterwards). Without that
//! variable the Postgres variants print why they skip and return.
//!
//! Also runs every ```sql block of docs/sql.md on both backends, so the documentation stays true.

use std::str::FromStr;

use rebound::classify::{Classification, DecidedBy, REASONS};
use rebound::parse::{FeedbackReport, Kind, OriginalMessage, Parsed, Recipient};
use rebound::store::{Backend, NewMessage, NewModelVersion, SaveOutcome, Store, StoreErrorKind};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor, Row};

mod common;

use common::db::{TestDb, execute, scalar, text, texts};

const POSTGRES_ENV: &str = "REBOUND_TEST_POSTGRES_URL";

/// A recipient of a test report.
struct Rcpt<'a> {
    address: &'a str,
    status: &'a str,
    reason: &'a str,
    hard: bool,
    confidence: f32,
    last_attempt: Option<&'a str>,
}

fn rcpt<'a>(address: &'a str, status: &'a str, reason: &'a str, hard: bool, confidence: f32) -> Rcpt<'a> {
    Rcpt { address, status, reason, hard, confidence, last_attempt: None }
}

/// A DSN about `rcpts`; `tag` makes the raw bytes (and so the SHA-256) unique.
fn dsn(tag: &str, rcpts: &[Rcpt<'_>]) -> NewMessage {
    let raw = format!(
        "From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail Returned to Sender\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n{tag}\r\n"
    )
    .into_bytes();
    let recipients = rcpts
        .iter()
        .map(|r| Recipient {
            recipient: r.address.to_string(),
            action: Some(if r.status.starts_with('2') { "delivered" } else { "failed" }.to_string()),
            status: Some(r.status.to_string()),
            reply_code: Some(if r.status.starts_with('5') { 550 } else { 250 }),
            diagnostic_type: Some("smtp".to_string()),
            diagnostic: Some(format!("{} {} test diagnostic for {}", 550, r.status, r.address)),
            smtp_command: Some("RCPT".to_string()),
            remote_mta: Some("mx.remote.example".to_string()),
            reporting_mta: Some("mx.example.net".to_string()),
            last_attempt_date: r.last_attempt.map(str::to_string),
            ..Recipient::default()
        })
        .collect();
    let classifications = rcpts
        .iter()
        .map(|r| Classification {
            reason: r.reason.to_string(),
            hard_bounce: r.hard,
            confidence: r.confidence,
            decided_by: DecidedBy::Status,
        })
        .collect();
    NewMessage {
        sha256: Sha256::digest(&raw).into(),
        raw,
        source: format!("file:tests/{tag}.eml"),
        parsed: Parsed {
            kind: Kind::Dsn,
            message_id: Some(format!("<{tag}@mx.example.net>")),
            from: Some("MAILER-DAEMON@mx.example.net".to_string()),
            subject: Some("Undelivered Mail Returned to Sender".to_string()),
            date: Some("Mon, 30 Nov 2026 08:00:00 +0000".to_string()),
            original: Some(OriginalMessage {
                message_id: Some("<orig@example.org>".to_string()),
                from: Some("news@example.org".to_string()),
                to: None,
                subject: Some("Our newsletter".to_string()),
            }),
            recipients,
            feedback: None,
            parse_error: None,
        },
        classifications,
        envelope_from: Some(String::new()),
        envelope_to: vec!["bounces@example.org".to_string()],
    }
}

/// An RFC 6591 SPF authentication failure report from `reporter` about `domain`.
fn arf(tag: &str, reporter: &str, domain: &str) -> NewMessage {
    let raw = format!("From: abuse@{reporter}\r\nSubject: auth failure {tag}\r\n\r\nreport\r\n").into_bytes();
    let fields = vec![
        ("Feedback-Type".to_string(), "auth-failure".to_string()),
        ("Version".to_string(), "1".to_string()),
        ("Auth-Failure".to_string(), "spf".to_string()),
        ("Source-IP".to_string(), "192.0.2.1".to_string()),
        ("Reported-Domain".to_string(), domain.to_string()),
        ("Original-Rcpt-To".to_string(), "a@example.org".to_string()),
        ("Original-Rcpt-To".to_string(), "b@example.org".to_string()),
    ];
    let feedback = FeedbackReport {
        feedback_type: "auth-failure".to_string(),
        version: Some("1".to_string()),
        auth_failure: Some("spf".to_string()),
        source_ip: Some("192.0.2.1".to_string()),
        reported_domains: vec![domain.to_string()],
        original_mail_from: Some(format!("sender@{domain}")),
        original_rcpt_to: vec!["a@example.org".to_string(), "b@example.org".to_string()],
        reporting_mta: Some(format!("mx.{reporter}")),
        spf_dns: vec![format!("txt : {domain} : v=spf1 -all")],
        incidents: Some(3),
        fields,
        ..FeedbackReport::default()
    };
    NewMessage {
        sha256: Sha256::digest(&raw).into(),
        raw,
        source: "lmtp".to_string(),
        parsed: Parsed {
            kind: Kind::Arf,
            message_id: Some(format!("<{tag}@{reporter}>")),
            from: Some(format!("abuse@{reporter}")),
            subject: Some(format!("auth failure {tag}")),
            date: None,
            original: None,
            recipients: vec![Recipient { recipient: format!("sender@{domain}"), ..Recipient::default() }],
            feedback: Some(feedback),
            parse_error: None,
        },
        classifications: vec![Classification {
            reason: "feedback".to_string(),
            hard_bounce: false,
            confidence: 1.0,
            decided_by: DecidedBy::Status,
        }],
        envelope_from: None,
        envelope_to: vec![],
    }
}

fn is_stored(o: &SaveOutcome) -> bool {
    matches!(o, SaveOutcome::Stored { .. })
}

// ---------------------------------------------------------------------------------------------------------
// Tests run on both backends.

async fn migrations_are_idempotent(db: &TestDb) {
    db.store.migrate().await.expect("second migrate");
    db.store.migrate().await.expect("third migrate");
    let applied = scalar(&db.store, "SELECT COUNT(*) FROM _sqlx_migrations").await;
    let dir = match db.store.backend() {
        Backend::Sqlite => "migrations/sqlite",
        Backend::Postgres => "migrations/postgres",
    };
    let files = std::fs::read_dir(dir).expect("migrations dir").count() as i64;
    assert_eq!(applied, files, "every migration applied exactly once");
    let builtin = scalar(&db.store, "SELECT COUNT(*) FROM categories WHERE builtin").await;
    assert_eq!(builtin, REASONS.len() as i64);
    let hard: Vec<String> = texts(&db.store, "SELECT name FROM categories WHERE hard_bounce ORDER BY name").await;
    assert_eq!(hard, ["hasmoved", "hostunknown", "notaccept", "userunknown"]);
}

async fn a_database_from_a_newer_rebound_is_a_schema_error(db: &TestDb) {
    let sql = "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
               VALUES (99999, 'from the future', true, $1, 0)";
    with_pool!(db.store, pool => sqlx::query(sql).bind(vec![0u8; 48]).execute(pool).await.map(|_| ()))
        .expect("record a future migration");
    let err = db.store.migrate().await.expect_err("unknown migration applied");
    assert_eq!(err.kind(), StoreErrorKind::Schema, "{err}");
    assert!(!err.is_temporary());
    assert!(err.to_string().contains("cannot migrate database"), "{err}");
}

async fn stores_every_field_of_a_dsn(db: &TestDb) {
    let mut hard = rcpt("Gone@Example.COM", "5.1.1", "userunknown", true, 0.9);
    hard.last_attempt = Some("Tue, 24 Nov 2026 10:30:00 +0100");
    let m = dsn("fields", &[hard, rcpt("full@example.com", "4.2.2", "mailboxfull", false, 0.9)]);
    let out = db.store.save_messages(std::slice::from_ref(&m)).await.expect("save");
    let SaveOutcome::Stored { message_id } = out[0] else { panic!("expected Stored, got {out:?}") };
    let s = &db.store;
    let sha = text(s, &format!("SELECT sha256 FROM messages WHERE id = {message_id}")).await;
    assert_eq!(sha.as_deref(), Some(hex::encode(m.sha256).as_str()));
    assert_eq!(text(s, "SELECT kind FROM messages").await.as_deref(), Some("dsn"));
    assert_eq!(text(s, "SELECT source FROM messages").await.as_deref(), Some("file:tests/fields.eml"));
    assert_eq!(text(s, "SELECT envelope_to FROM messages").await.as_deref(), Some("bounces@example.org"));
    assert_eq!(text(s, "SELECT report_subject FROM messages").await.as_deref(), m.parsed.subject.as_deref());
    assert_eq!(scalar(s, "SELECT size FROM messages").await, m.raw.len() as i64);
    let raw: Vec<u8> = with_pool!(s, pool => sqlx::query_scalar("SELECT raw FROM messages").fetch_one(pool).await)
        .expect("raw");
    assert_eq!(raw, m.raw, "raw bytes round-trip");

    assert_eq!(scalar(s, "SELECT COUNT(*) FROM bounces").await, 2);
    let row = "FROM bounces WHERE position = 0";
    assert_eq!(text(s, &format!("SELECT recipient {row}")).await.as_deref(), Some("Gone@Example.COM"));
    assert_eq!(text(s, &format!("SELECT recipient_domain {row}")).await.as_deref(), Some("example.com"));
    assert_eq!(text(s, &format!("SELECT reason {row}")).await.as_deref(), Some("userunknown"));
    assert_eq!(text(s, &format!("SELECT status {row}")).await.as_deref(), Some("5.1.1"));
    assert_eq!(text(s, &format!("SELECT original_subject {row}")).await.as_deref(), Some("Our newsletter"));
    assert_eq!(scalar(s, &format!("SELECT reply_code {row}")).await, 550);
    assert_eq!(scalar(s, &format!("SELECT COUNT(*) {row} AND hard_bounce")).await, 1);
    assert_eq!(scalar(s, "SELECT COUNT(*) FROM bounces WHERE decided_by = 'status'").await, 2);
    // bounced_at comes from Last-Attempt-Date (in UTC), else from the report's Date.
    let day_sql = match s.backend() {
        Backend::Sqlite => "SELECT bounced_at FROM bounces ORDER BY position",
        Backend::Postgres => "SELECT to_char(bounced_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') FROM bounces ORDER BY position",
    };
    assert_eq!(texts(s, day_sql).await, ["2026-11-24 09:30:00", "2026-11-30 08:00:00"]);
}

async fn deduplicates_across_calls_and_within_a_batch(db: &TestDb) {
    let a = dsn("dedup-a", &[rcpt("x@example.com", "5.1.1", "userunknown", true, 0.9)]);
    let b = dsn("dedup-b", &[rcpt("y@example.com", "5.1.1", "userunknown", true, 0.9)]);
    let out = db.store.save_messages(&[a.clone(), a.clone(), b.clone()]).await.expect("save");
    assert!(is_stored(&out[0]) && is_stored(&out[2]), "{out:?}");
    assert_eq!(out[1], SaveOutcome::Duplicate { message_id: out[0].message_id() });
    assert_ne!(out[0].message_id(), out[2].message_id());
    let again = db.store.save_messages(&[b, a]).await.expect("save again");
    assert_eq!(again, [SaveOutcome::Duplicate { message_id: out[2].message_id() },
                       SaveOutcome::Duplicate { message_id: out[0].message_id() }]);
    assert_eq!(scalar(&db.store, "SELECT COUNT(*) FROM messages").await, 2);
    assert_eq!(scalar(&db.store, "SELECT COUNT(*) FROM bounces").await, 2, "no second bounce row for a duplicate");
}

async fn a_bad_message_does_not_fail_the_others(db: &TestDb) {
    let good1 = dsn("good-1", &[rcpt("a@example.com", "5.1.1", "userunknown", true, 0.9)]);
    // A confidence outside 0..1 violates a CHECK constraint: the database refuses this message's bounce.
    let refused = dsn("refused", &[rcpt("b@example.com", "5.1.1", "userunknown", true, 1.5)]);
    let good2 = dsn("good-2", &[rcpt("c@example.com", "4.2.2", "mailboxfull", false, 0.9)]);
    // A caller's mistake: classifications that do not match the recipients.
    let mut mismatched = dsn("mismatched", &[rcpt("d@example.com", "5.1.1", "userunknown", true, 0.9)]);
    mismatched.classifications.clear();
    let out = db.store.save_messages(&[good1, refused, good2, mismatched]).await.expect("batch survives");
    assert_eq!(out.len(), 4);
    assert!(out.iter().all(is_stored), "{out:?}");
    let s = &db.store;
    assert_eq!(scalar(s, "SELECT COUNT(*) FROM messages").await, 4, "every message kept");
    assert_eq!(texts(s, "SELECT recipient FROM bounces ORDER BY recipient").await, ["a@example.com", "c@example.com"]);
    let refused_row = format!("FROM messages WHERE id = {}", out[1].message_id());
    assert_eq!(text(s, &format!("SELECT kind {refused_row}")).await.as_deref(), Some("unparsed"));
    let why = text(s, &format!("SELECT parse_error {refused_row}")).await.unwrap_or_default();
    assert!(why.contains("refused"), "parse_error says why: {why}");
    let mismatched_row = format!("FROM messages WHERE id = {}", out[3].message_id());
    let why = text(s, &format!("SELECT parse_error {mismatched_row}")).await.unwrap_or_default();
    assert!(why.contains("1 recipients but 0 classifications"), "{why}");
    // The refused message's raw bytes are still there for a later re-parse.
    assert!(scalar(s, &format!("SELECT size {refused_row}")).await > 0);
}

async fn a_large_batch_keeps_order_and_counts(db: &TestDb) {
    // More messages and bounces than one multi-row statement takes, with duplicates scattered through it.
    let mut batch: Vec<NewMessage> = (0..300)
        .map(|i| dsn(&format!("large-{i}"), &[rcpt("a@example.com", "5.1.1", "userunknown", true, 0.9),
                                               rcpt("b@example.com", "4.2.2", "mailboxfull", false, 0.9)]))
        .collect();
    batch.push(batch[7].clone());
    batch.insert(0, batch[299].clone());
    let out = db.store.save_messages(&batch).await.expect("save");
    assert_eq!(out.len(), 302);
    assert!(is_stored(&out[0]), "the first occurrence is the stored one");
    assert_eq!(out[300], SaveOutcome::Duplicate { message_id: out[0].message_id() });
    assert_eq!(out[301], SaveOutcome::Duplicate { message_id: out[8].message_id() });
    assert_eq!(out.iter().filter(|o| is_stored(o)).count(), 300);
    // Outcomes follow the input order: each message's id points at its own bytes.
    for (m, o) in batch.iter().zip(&out).step_by(37) {
        let sha = text(&db.store, &format!("SELECT sha256 FROM messages WHERE id = {}", o.message_id())).await;
        assert_eq!(sha.as_deref(), Some(hex::encode(m.sha256).as_str()));
    }
    assert_eq!(scalar(&db.store, "SELECT COUNT(*) FROM bounces").await, 600);
}

async fn nul_characters_are_stored(db: &TestDb) {
    let mut m = dsn("nul", &[rcpt("nul@example.com", "5.1.1", "userunknown", true, 0.9)]);
    m.parsed.subject = Some("bad\0subject".to_string());
    m.parsed.recipients[0].diagnostic = Some("550\0 no".to_string());
    let out = db.store.save_messages(&[m]).await.expect("save");
    assert!(is_stored(&out[0]));
    assert_eq!(text(&db.store, "SELECT report_subject FROM messages").await.as_deref(), Some("bad\u{FFFD}subject"));
    assert_eq!(scalar(&db.store, "SELECT COUNT(*) FROM bounces").await, 1, "the bounce row was kept");
}

async fn stores_feedback_reports_with_lists_and_fields(db: &TestDb) {
    let out = db
        .store
        .save_messages(&[arf("r1", "reporter.example", "example.org"), arf("r2", "reporter.example", "example.net")])
        .await
        .expect("save");
    assert!(out.iter().all(is_stored));
    let s = &db.store;
    assert_eq!(scalar(s, "SELECT COUNT(*) FROM feedback_reports").await, 2);
    assert_eq!(scalar(s, "SELECT COUNT(*) FROM feedback_fields").await, 14);
    assert_eq!(scalar(s, "SELECT COUNT(*) FROM feedback_lists WHERE list = 'original_rcpt_to'").await, 4);
    assert_eq!(scalar(s, "SELECT COUNT(*) FROM feedback_lists WHERE list = 'spf_dns'").await, 2);
    assert_eq!(scalar(s, "SELECT CAST(SUM(incidents) AS BIGINT) FROM feedback_reports").await, 6);
    let names = texts(s, "SELECT name FROM feedback_fields f JOIN feedback_reports r ON r.id = f.report_id \
                          WHERE r.reported_domain = 'example.org' ORDER BY position").await;
    assert_eq!(names[0], "Feedback-Type");
    assert_eq!(names.len(), 7);
    let reporter = text(s, "SELECT reporter FROM reports_received_by_reporter").await;
    assert_eq!(reporter.as_deref(), Some("mx.reporter.example"));
    assert_eq!(scalar(s, "SELECT reports FROM reports_received_by_reporter").await, 2);
    assert_eq!(scalar(s, "SELECT domains FROM reports_received_by_reporter").await, 2);
    assert_eq!(text(s, "SELECT reason FROM bounces LIMIT 1").await.as_deref(), Some("feedback"));
}

async fn views_answer_the_common_questions(db: &TestDb) {
    fn at<'a>(addr: &'a str, status: &'a str, reason: &'a str, hard: bool, when: &'a str) -> Rcpt<'a> {
        Rcpt { last_attempt: Some(when), ..rcpt(addr, status, reason, hard, 0.9) }
    }
    let batch = [
        dsn("v1", &[at("gone@example.com", "5.1.1", "userunknown", true, "Mon, 23 Nov 2026 10:00:00 +0000")]),
        dsn("v2", &[at("back@example.com", "5.1.1", "userunknown", true, "Mon, 23 Nov 2026 11:00:00 +0000")]),
        // back@ was delivered later: no longer to suppress.
        dsn("v3", &[at("back@example.com", "2.0.0", "delivered", false, "Tue, 24 Nov 2026 11:00:00 +0000")]),
        dsn("v4", &[at("gone@example.com", "5.1.1", "userunknown", true, "Tue, 24 Nov 2026 12:00:00 +0000")]),
        dsn("v5", &[{
            let mut r = at("unsure@example.net", "5.0.0", "onhold", false, "Tue, 24 Nov 2026 13:00:00 +0000");
            r.confidence = 0.0;
            r
        }]),
    ];
    db.store.save_messages(&batch).await.expect("save");
    let s = &db.store;

    assert_eq!(texts(s, "SELECT recipient FROM suppression_list").await, ["gone@example.com"]);
    assert_eq!(scalar(s, "SELECT hard_bounces FROM suppression_list").await, 2);

    let per_day = texts(s, "SELECT day || ' ' || reason || ' ' || CAST(bounces AS TEXT) FROM bounces_by_reason_daily \
                            ORDER BY day, reason").await;
    assert_eq!(per_day, ["2026-11-23 userunknown 2", "2026-11-24 delivered 1", "2026-11-24 onhold 1",
                         "2026-11-24 userunknown 1"]);

    assert_eq!(texts(s, "SELECT recipient FROM labelling_queue").await, ["unsure@example.net"]);
    let bounce_id = scalar(s, "SELECT bounce_id FROM labelling_queue").await;
    execute(s, &format!("INSERT INTO labels (bounce_id, reason, labelled_by) VALUES ({bounce_id}, 'filtered', 'test')")).await;
    assert_eq!(scalar(s, "SELECT COUNT(*) FROM labelling_queue").await, 0, "a labelled bounce leaves the queue");

    for (ip, result) in [("192.0.2.1", "fail"), ("192.0.2.1", "fail"), ("192.0.2.2", "softfail"), ("192.0.2.3", "pass")] {
        execute(s, &format!("INSERT INTO spf_checks (checked_at, client_ip, helo, mail_from, identity, domain, result) \
                             VALUES ('2026-11-24 10:00:00', '{ip}', 'mx.example', 'a@example.org', 'mail_from', \
                             'example.org', '{result}')")).await;
    }
    let failures = texts(s, "SELECT client_ip || ' ' || result || ' ' || CAST(failures AS TEXT) \
                             FROM spf_failures_by_domain_ip ORDER BY client_ip").await;
    assert_eq!(failures, ["192.0.2.1 fail 2", "192.0.2.2 softfail 1"]);
}

async fn labels_refuse_unknown_reasons(db: &TestDb) {
    db.store.save_messages(&[dsn("l", &[rcpt("l@example.com", "5.0.0", "onhold", false, 0.0)])]).await.expect("save");
    let id = scalar(&db.store, "SELECT id FROM bounces").await;
    let sql = format!("INSERT INTO labels (bounce_id, reason, labelled_by) VALUES ({id}, 'no-such-reason', 'test')");
    let refused = with_pool!(db.store, pool => sqlx::query(&sql).execute(pool).await.map(|_| ()));
    assert!(refused.is_err(), "a label naming an unknown category is refused");
    execute(&db.store, "INSERT INTO categories (name, description, hard_bounce) VALUES ('gmail-throttle', 'custom', false)").await;
    execute(&db.store, &sql.replace("no-such-reason", "gmail-throttle")).await;
}

async fn a_label_replaces_the_verdict_and_keeps_history(db: &TestDb) {
    let s = &db.store;
    s.save_messages(&[dsn("lab", &[rcpt("who@example.com", "5.0.0", "onhold", false, 0.0),
                                   rcpt("later@example.com", "4.0.0", "onhold", false, 0.0)])])
        .await.expect("save");
    let id = scalar(s, "SELECT id FROM bounces WHERE recipient = 'who@example.com'").await;
    let label = s.add_label(id, "userunknown", "alice").await.expect("label");
    let row = format!("FROM bounces WHERE id = {id}");
    assert_eq!(text(s, &format!("SELECT reason {row}")).await.as_deref(), Some("userunknown"));
    assert_eq!(text(s, &format!("SELECT decided_by {row}")).await.as_deref(), Some("user"));
    assert_eq!(texts(s, "SELECT recipient FROM suppression_list").await, ["who@example.com"], "a 5.x.x userunknown is hard");
    assert_eq!(texts(s, "SELECT recipient FROM labelling_queue").await, ["later@example.com"]);
    // A temporary failure is never hard, whatever the label.
    let later = scalar(s, "SELECT id FROM bounces WHERE recipient = 'later@example.com'").await;
    s.add_label(later, "userunknown", "alice").await.expect("label");
    assert_eq!(scalar(s, &format!("SELECT COUNT(*) FROM bounces WHERE id = {later} AND hard_bounce")).await, 0);

    // Relabelling: only the latest label is an example, and it remembers what it replaced.
    s.upsert_category("gmail-throttle", Some("Gmail rate limiting"), false).await.expect("category");
    let relabel = s.add_label(id, "gmail-throttle", "bob").await.expect("relabel");
    assert!(relabel > label);
    let examples = s.labelled_bounces(0).await.expect("examples");
    assert_eq!(examples.len(), 2);
    let who = examples.iter().find(|e| e.bounce_id == id).expect("who@");
    assert_eq!((who.reason.as_str(), who.previous_reason.as_deref()), ("gmail-throttle", Some("userunknown")));
    assert_eq!(who.status.as_deref(), Some("5.0.0"));
    assert!(s.labelled_bounces(relabel).await.expect("none newer").is_empty());
    assert_eq!(text(s, &format!("SELECT previous_reason FROM labels WHERE id = {label}")).await.as_deref(), Some("onhold"));
    assert!(texts(s, "SELECT recipient FROM suppression_list").await.is_empty(), "no longer hard");

    let unknown = s.add_label(id, "no-such-reason", "bob").await.expect_err("unknown reason");
    assert_eq!(unknown.kind(), StoreErrorKind::Data);
    assert!(unknown.to_string().contains("unknown reason"), "{unknown}");
    let missing = s.add_label(id + 1000, "userunknown", "bob").await.expect_err("unknown bounce");
    assert!(missing.to_string().contains("no such bounce"), "{missing}");
    assert_eq!(scalar(s, "SELECT COUNT(*) FROM labels").await, 3, "failed labels leave nothing behind");
}

async fn categories_keep_builtins_and_accept_custom_ones(db: &TestDb) {
    let s = &db.store;
    s.upsert_category("needs-whitelisting", None, false).await.expect("custom");
    s.upsert_category("needs-whitelisting", Some("ask their postmaster"), true).await.expect("update custom");
    s.upsert_category("userunknown", Some("changed"), false).await.expect("built-in name accepted");
    let all = s.categories().await.expect("categories");
    assert_eq!(all.len(), REASONS.len() + 1);
    let custom = all.iter().find(|c| c.name == "needs-whitelisting").expect("custom");
    assert_eq!((custom.description.as_deref(), custom.hard_bounce, custom.builtin), (Some("ask their postmaster"), true, false));
    let builtin = all.iter().find(|c| c.name == "userunknown").expect("builtin");
    assert!(builtin.hard_bounce && builtin.builtin && builtin.description.as_deref() != Some("changed"));
    let bad = s.upsert_category("two words", None, false).await.expect_err("bad name");
    assert_eq!(bad.kind(), StoreErrorKind::Data);
}

async fn model_versions_have_one_active(db: &TestDb) {
    let s = &db.store;
    let v1 = s.record_model_version(NewModelVersion { trained_on: "corpus", metrics_json: "{\"accuracy\": 0.9}",
                                                      path: None, weights: Some(&[1, 2, 3]) }, true).await.expect("v1");
    let v2 = s.record_model_version(NewModelVersion { trained_on: "corpus + 10 labels", metrics_json: "{}",
                                                      path: Some("models/v2"), weights: None }, true).await.expect("v2");
    let active = |vs: Vec<rebound::store::ModelVersion>| vs.into_iter().filter(|v| v.active).map(|v| v.id).collect::<Vec<_>>();
    assert_eq!(active(s.model_versions().await.expect("list")), [v2]);
    s.activate_model_version(v1).await.expect("rollback");
    let versions = s.model_versions().await.expect("list");
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0].created_at.len(), "YYYY-MM-DD HH:MM:SS".len());
    assert!(versions[0].has_weights && !versions[1].has_weights);
    assert_eq!(active(versions), [v1]);
    assert_eq!(s.model_weights(v1).await.expect("weights"), Some(vec![1, 2, 3]));
    assert_eq!(s.model_weights(v2).await.expect("no weights"), None);
    let err = s.activate_model_version(v2 + 100).await.expect_err("no such version");
    assert_eq!(err.kind(), StoreErrorKind::Data);
    assert_eq!(active(s.model_versions().await.expect("list")), [v1], "a failed activation changes nothing");
    let err = s.record_model_version(NewModelVersion { trained_on: "x", metrics_json: "{}", path: None, weights: None }, false)
        .await.expect_err("nowhere");
    assert_eq!(err.kind(), StoreErrorKind::Data);
}

async fn concurrent_writers_of_the_same_message_agree(db: &TestDb) {
    let m = dsn("race", &[rcpt("race@example.com", "5.1.1", "userunknown", true, 0.9)]);
    let (s1, s2) = (db.store.clone(), db.store.clone());
    let (m1, m2) = (m.clone(), m);
    let t1 = tokio::spawn(async move { s1.save_messages(&[m1]).await });
    let t2 = tokio::spawn(async move { s2.save_messages(&[m2]).await });
    let o1 = t1.await.expect("join").expect("save 1")[0];
    let o2 = t2.await.expect("join").expect("save 2")[0];
    assert_eq!(o1.message_id(), o2.message_id());
    assert_eq!([o1, o2].iter().filter(|o| is_stored(o)).count(), 1, "{o1:?} {o2:?}");
    assert_eq!(scalar(&db.store, "SELECT COUNT(*) FROM bounces").await, 1);
}

async fn overlapping_batches_in_opposite_orders_do_not_deadlock(db: &TestDb) {
    // Two writers store the same 600 messages in opposite orders at the same time: inserting in hash order
    // means neither waits for a lock the other holds while holding one it needs. (Inserting in the given
    // order, Postgres reports a deadlock here.)
    for round in 0..2 {
        let batch: Vec<NewMessage> = (0..600)
            .map(|i| dsn(&format!("overlap-{round}-{i}"), &[rcpt("o@example.com", "5.1.1", "userunknown", true, 0.9)]))
            .collect();
        let mut reversed = batch.clone();
        reversed.reverse();
        let (s1, s2) = (db.store.clone(), db.store.clone());
        let t1 = tokio::spawn(async move { s1.save_messages(&batch).await });
        let t2 = tokio::spawn(async move { s2.save_messages(&reversed).await });
        let o1 = t1.await.expect("join").expect("writer 1");
        let o2 = t2.await.expect("join").expect("writer 2");
        let stored = o1.iter().chain(&o2).filter(|o| is_stored(o)).count();
        assert_eq!(stored, 600, "each message stored exactly once in round {round}");
    }
    assert_eq!(scalar(&db.store, "SELECT COUNT(*) FROM bounces").await, 1200);
}

/// Sample rows in every table, so each documented query has something to chew on.
async fn sample_data(db: &TestDb) {
    let s = &db.store;
    let mut batch = vec![
        dsn("d1", &[rcpt("gone@example.com", "5.1.1", "userunknown", true, 0.9),
                    rcpt("full@example.net", "4.2.2", "mailboxfull", false, 0.9)]),
        dsn("d2", &[rcpt("unsure@example.net", "5.0.0", "onhold", false, 0.0)]),
        arf("a1", "reporter.example", "example.org"),
    ];
    batch[1].parsed.kind = Kind::Bounce;
    s.save_messages(&batch).await.expect("save sample messages");
    execute(s, "INSERT INTO spf_checks (client_ip, helo, mail_from, identity, domain, result, explanation, record, \
                mechanism, action) VALUES ('192.0.2.1', 'mx.example', 'a@example.org', 'mail_from', 'example.org', \
                'fail', 'not permitted', 'v=spf1 ip4:198.51.100.0/24 -all', '-all', 'prepend')").await;
    let check_id = scalar(s, "SELECT MAX(id) FROM spf_checks").await;
    let insert_report = "INSERT INTO outgoing_reports (check_id, kind, domain, report_address, message, status, attempts, last_error) \
                         VALUES ($1, 'spf-failure', 'example.org', 'postmaster@example.org', $2, 'failed', 1, '451 try later')";
    with_pool!(s, pool => sqlx::query(insert_report).bind(check_id).bind(b"From: x\r\n\r\nreport".as_slice()).execute(pool).await.map(|_| ()))
        .expect("insert outbox entry");
    execute(s, "INSERT INTO report_attempts (report_id, outcome, smtp_code, detail, duration_ms) \
                SELECT MAX(id), 'temporary', 451, 'try later', 12 FROM outgoing_reports").await;
    execute(s, "INSERT INTO rate_limits (key, window_start, count) VALUES ('addr:postmaster@example.org', '2026-11-24 00:00:00', 1)").await;
    execute(s, "INSERT INTO model_versions (trained_on, metrics, path, active) \
                VALUES ('models/corpus + 10 labels', '{\"accuracy\": 0.95}', 'models/head.safetensors', true)").await;
}

/// The ```sql blocks of docs/sql.md for `backend`: all shared blocks, plus those whose first line is
/// `-- sqlite only` / `-- postgres only` for that backend.
fn doc_queries(backend: Backend) -> Vec<String> {
    let doc = std::fs::read_to_string("docs/sql.md").expect("docs/sql.md");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match (&mut current, line.trim()) {
            (None, "```sql") => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap_or_default()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
        .into_iter()
        .filter(|b| {
            let first = b.lines().next().unwrap_or("").trim().to_ascii_lowercase();
            match backend {
                Backend::Sqlite => first != "-- postgres only",
                Backend::Postgres => first != "-- sqlite only",
            }
        })
        .collect()
}

async fn every_documented_query_runs(db: &TestDb) {
    sample_data(db).await;
    let queries = doc_queries(db.store.backend());
    assert!(queries.len() >= 12, "docs/sql.md has {} queries for {:?}", queries.len(), db.store.backend());
    let mut with_rows = 0;
    for sql in &queries {
        let rows = with_pool!(db.store, pool => sqlx::query(sql).fetch_all(pool).await.map(|rows| rows.len()))
            .unwrap_or_else(|e| panic!("documented query fails on {:?}:\n{sql}\n{e}", db.store.backend()));
        with_rows += usize::from(rows > 0);
    }
    assert!(with_rows * 2 >= queries.len(), "most documented queries find the sample data ({with_rows}/{})", queries.len());
}

async fn every_view_runs(db: &TestDb) {
    sample_data(db).await;
    for view in ["bounces_by_reason_daily", "suppression_list", "spf_failures_by_domain_ip",
                 "reports_received_by_reporter", "labelling_queue"] {
        let n = scalar(&db.store, &format!("SELECT COUNT(*) FROM {view}")).await;
        assert!(n > 0, "view {view} finds the sample data");
    }
    // The column list of each view is part of the documented interface.
    let cols = with_pool!(db.store, pool => sqlx::query("SELECT * FROM suppression_list").fetch_one(pool).await
        .map(|row| row.columns().iter().map(|c| sqlx::Column::name(c).to_string()).collect::<Vec<_>>()))
        .expect("suppression_list row");
    assert_eq!(cols, ["recipient", "recipient_domain", "reason", "status", "reply_code", "diagnostic", "remote_mta",
                      "last_bounced_at", "bounce_id", "hard_bounces"]);
}

// One `#[tokio::test]` per backend for each shared test.
on_both_backends!(
    migrations_are_idempotent,
    a_database_from_a_newer_rebound_is_a_schema_error,
    stores_every_field_of_a_dsn,
    deduplicates_across_calls_and_within_a_batch,
    a_bad_message_does_not_fail_the_others,
    a_large_batch_keeps_order_and_counts,
    nul_characters_are_stored,
    stores_feedback_reports_with_lists_and_fields,
    views_answer_the_common_questions,
    labels_refuse_unknown_reasons,
    a_label_replaces_the_verdict_and_keeps_history,
    categories_keep_builtins_and_accept_custom_ones,
    model_versions_have_one_active,
    concurrent_writers_of_the_same_message_agree,
    overlapping_batches_in_opposite_orders_do_not_deadlock,
    every_documented_query_runs,
    every_view_runs,
);

// ---------------------------------------------------------------------------------------------------------
// Failure modes of each backend.

#[tokio::test]
async fn sqlite_missing_directory_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("no/such/dir/rebound.db").display());
    let err = Store::open(&url).await.expect_err("no directory");
    assert_eq!(err.kind(), StoreErrorKind::Config);
    assert!(!err.is_temporary());
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[tokio::test]
async fn sqlite_file_that_is_not_a_database_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rebound.db");
    std::fs::write(&path, b"this is a mailbox, not a database\n".repeat(200)).expect("write");
    let err = Store::open(&format!("sqlite://{}", path.display())).await.expect_err("not a database");
    assert_eq!(err.kind(), StoreErrorKind::Config, "{err}");
    assert!(!err.is_temporary());
}

#[tokio::test]
async fn sqlite_read_only_database_is_a_temporary_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rebound.db");
    let url = format!("sqlite://{}", path.display());
    Store::open(&url).await.expect("create").close().await;
    let mut perms = std::fs::metadata(&path).expect("db file").permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(&path, perms).expect("chmod");
    // root ignores file modes; then open the file read-only the way SQLite does for an unwritable file.
    let ro_url = if std::fs::OpenOptions::new().write(true).open(&path).is_ok() {
        eprintln!("running as root: file mode does not stop writes, opening with mode=ro instead");
        format!("{url}?mode=ro")
    } else {
        url
    };
    let store = Store::connect_without_migrating(&ro_url).await.expect("a read-only file still opens");
    let m = dsn("ro", &[rcpt("ro@example.com", "5.1.1", "userunknown", true, 0.9)]);
    let err = store.save_messages(&[m]).await.expect_err("cannot write");
    assert_eq!(err.kind(), StoreErrorKind::ReadOnly, "{err}");
    assert!(err.is_temporary());
}

#[tokio::test]
async fn sqlite_full_database_is_a_temporary_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("rebound.db").display());
    Store::open(&url).await.expect("create").close().await;
    // Cap the file at its current size plus a little: the next big message fills the "disk".
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(&url).expect("url").pragma("max_page_count", "80");
    let store = Store::connect_sqlite(options).await.expect("open capped");
    let mut m = dsn("big", &[rcpt("big@example.com", "5.2.2", "mailboxfull", false, 0.9)]);
    m.raw = vec![b'x'; 4 << 20];
    m.sha256 = Sha256::digest(&m.raw).into();
    let err = store.save_messages(&[m]).await.expect_err("no room");
    assert_eq!(err.kind(), StoreErrorKind::DiskFull, "{err}");
    assert!(err.is_temporary());
}

#[tokio::test]
async fn sqlite_locked_database_is_busy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("rebound.db").display());
    let store = Store::open(&url).await.expect("create");
    let mut locker = sqlx::SqliteConnection::connect(&url).await.expect("second connection");
    locker.execute("BEGIN EXCLUSIVE").await.expect("take the write lock");
    let m = dsn("busy", &[rcpt("busy@example.com", "5.1.1", "userunknown", true, 0.9)]);
    let err = store.save_messages(std::slice::from_ref(&m)).await.expect_err("locked");
    assert_eq!(err.kind(), StoreErrorKind::Busy, "{err}");
    assert!(err.is_temporary());
    locker.execute("ROLLBACK").await.expect("release");
    let out = store.save_messages(&[m]).await.expect("saved once the lock is gone");
    assert!(is_stored(&out[0]), "nothing of the failed attempt was committed");
}

#[tokio::test]
async fn sqlite_commits_are_visible_to_a_new_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("rebound.db").display());
    let store = Store::open(&url).await.expect("create");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(store.sqlite_pool().expect("sqlite"))
        .await.expect("journal_mode");
    assert_eq!(mode, "wal");
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(store.sqlite_pool().expect("sqlite"))
        .await.expect("synchronous");
    assert_eq!(sync, 2, "synchronous=FULL: an acknowledged commit survives power loss");
    store.save_messages(&[dsn("durable", &[rcpt("d@example.com", "5.1.1", "userunknown", true, 0.9)])])
        .await.expect("save");
    // No close(): a second, independent connection must see the commit.
    let mut other = sqlx::SqliteConnection::connect(&url).await.expect("other connection");
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM bounces").fetch_one(&mut other).await.expect("count");
    assert_eq!(n, 1);
}

#[tokio::test]
async fn sqlite_in_memory_database_works() {
    let store = Store::open("sqlite::memory:").await.expect("open in memory");
    let out = store.save_messages(&[dsn("mem", &[rcpt("m@example.com", "5.1.1", "userunknown", true, 0.9)])])
        .await.expect("save");
    assert!(is_stored(&out[0]));
    // Every pooled connection sees the same database.
    let pool = store.sqlite_pool().expect("sqlite");
    let (mut a, mut b) = (pool.acquire().await.expect("conn a"), pool.acquire().await.expect("conn b"));
    for conn in [&mut a, &mut b] {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM bounces").fetch_one(&mut **conn).await.expect("count");
        assert_eq!(n, 1);
    }
}

#[tokio::test]
async fn unsupported_url_is_a_config_error() {
    let err = Store::open("mysql://root@localhost/rebound").await.expect_err("unsupported");
    assert_eq!(err.kind(), StoreErrorKind::Config);
}

#[tokio::test]
async fn postgres_unreachable_is_a_temporary_error() {
    let err = Store::open("postgres://rebound:secret@127.0.0.1:1/rebound").await.expect_err("nothing listens on port 1");
    assert_eq!(err.kind(), StoreErrorKind::Unreachable, "{err}");
    assert!(err.is_temporary());
    assert!(!err.to_string().contains("secret"), "the password never appears: {err}");
    assert!(err.to_string().contains("rebound:***@127.0.0.1:1"), "{err}");
}

#[tokio::test]
async fn postgres_tls_without_tls_support_is_a_config_error() {
    let err = Store::open("postgres://rebound@127.0.0.1:5432/rebound?sslmode=require").await.expect_err("no TLS");
    assert_eq!(err.kind(), StoreErrorKind::Config);
    assert!(err.to_string().contains("TLS"), "{err}");
}

#[tokio::test]
async fn postgres_missing_database_is_a_config_error() {
    let Ok(url) = std::env::var(POSTGRES_ENV) else {
        eprintln!("skipping: {POSTGRES_ENV} is not set");
        return;
    };
    let options = PgConnectOptions::from_str(&url).expect("url").database("rebound_no_such_database");
    let err = Store::connect_postgres(options)
        .await
        .expect_err("no such database");
    assert_eq!(err.kind(), StoreErrorKind::Config, "{err}");
}
