//! SPF failure reports end to end, with real parts only: a DNS server on 127.0.0.1 (the domain's SPF
//! record with `ra=`, and our DKIM public keys), the policy server, the writer into a SQLite database,
//! the sender, and an SMTP sink on 127.0.0.1. The report must parse as RFC 6591 ARF (mail-auth), carry
//! its feedback part 7bit, and its RSA and Ed25519 DKIM signatures must verify (mail-auth, and dkimpy
//! when python3-dkim is installed). A flood gives exactly the rate limit's number of reports; a relay
//! that answers 451 gets the report again later, every attempt recorded; the kill switch stops sending.

mod spf_support;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mail_auth::report::{AuthFailureType, Feedback};
use rebound::report::config::{ReportSpfConfig, SmtpConfig};
use rebound::report::dkim::{Algorithm, DkimKey, DkimKeyConfig};
use rebound::report::queue::{Reporter, run_writer};
use rebound::report::sender::Sender;
use rebound::spf::Verifier;
use rebound::spf::config::PolicyMode;
use rebound::spf::dns::{DnsOptions, DnsResolver, DnsServers};
use rebound::spf::policy::{PolicyService, PolicySettings};
use rebound::store::Store;
use spf_support::smtp::{dkimpy_verifies, fixture, mail_auth_verifies, public};
use spf_support::{DnsServer, smtp_sink, start, txt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

async fn zone() -> DnsServer {
    start(&[
        ("example.com", txt("v=spf1 ip4:192.0.2.0/24 -all ra=spf-reports rr=f:s")),
        ("quiet.example", txt("v=spf1 ip4:192.0.2.0/24 -all")),
        ("mx.helo.example", txt("v=spf1 ip4:192.0.2.0/24 -all ra=helo-reports rr=f")),
        ("rsa._domainkey.ours.example", txt(&format!("v=DKIM1; k=rsa; p={}", public("rsa2048.pub.b64")))),
        ("ed._domainkey.ours.example", txt(&format!("v=DKIM1; k=ed25519; p={}", public("ed25519.pub.b64")))),
    ])
    .await
}

struct Setup {
    dns: DnsServer,
    store: Store,
    policy: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn setup(rate: &str) -> Setup {
    let dns = zone().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("r.db").display())).await.unwrap();
    let keys = vec![
        DkimKey::load(&DkimKeyConfig {
            domain: "ours.example".into(),
            selector: "rsa".into(),
            key: fixture("rsa2048.pem"),
            algorithm: Algorithm::RsaSha256,
        })
        .unwrap(),
        DkimKey::load(&DkimKeyConfig {
            domain: "ours.example".into(),
            selector: "ed".into(),
            key: fixture("ed25519.pem"),
            algorithm: Algorithm::Ed25519Sha256,
        })
        .unwrap(),
    ];
    let config = ReportSpfConfig {
        enabled: true,
        from_address: "reports@ours.example".into(),
        rate: rate.into(),
        own_networks: vec![],
        ..ReportSpfConfig::default()
    };
    let reporter = Arc::new(Reporter::new(config, keys, "mx.ours.example".into()).unwrap());
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(run_writer(store.clone(), rx, Some(reporter)));
    let options = DnsOptions { servers: DnsServers::List(vec![dns.addr]), timeout: Duration::from_millis(300), attempts: 1, ..DnsOptions::default() };
    let verifier = Verifier::new(DnsResolver::new(&options).unwrap(), "mx.ours.example");
    let settings = PolicySettings { helo: PolicyMode::Relaxed, mail_from: PolicyMode::Relaxed, auth_serv_id: "mx.ours.example".into(), trusted: vec![] };
    let service = Arc::new(PolicyService::new(verifier, settings, Some(tx)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let policy = listener.local_addr().unwrap();
    tokio::spawn(service.serve(listener, std::future::pending()));
    Setup { dns, store, policy, _dir: dir }
}

/// Sends `n` failing checks (distinct transactions) for `sender` over one connection.
async fn fail_checks(policy: SocketAddr, sender: &str, n: usize) {
    checks(policy, "bad.example.net", sender, n).await;
}

/// Sends `n` checks (distinct transactions) for `helo` and `sender` over one connection, each from
/// another client address of 203.0.113.0/24.
async fn checks(policy: SocketAddr, helo: &str, sender: &str, n: usize) {
    for i in 0..n {
        let ip = format!("203.0.113.{}", i % 250 + 1);
        spf_support::policy_checks(policy, &ip, helo, sender, &format!("flood.{sender}.{i}"), 1).await;
    }
}

async fn count(store: &Store, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(store.sqlite_pool().unwrap()).await.unwrap()
}

async fn wait_for(store: &Store, sql: &str, want: i64) -> i64 {
    let mut got = 0;
    for _ in 0..200 {
        got = count(store, sql).await;
        if got >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    got
}

fn sender(s: &Setup, sink: SocketAddr, enabled: bool) -> Sender {
    let smtp = SmtpConfig { relay: sink.to_string(), ..SmtpConfig::default() };
    Sender::new(s.store.clone(), &smtp, "reports@ours.example", 8, Arc::new(AtomicBool::new(enabled))).unwrap()
}

#[tokio::test]
async fn a_failure_becomes_a_signed_arf_report_delivered_over_smtp() {
    let s = setup("1/1d").await;
    fail_checks(s.policy, "someone@example.com", 1).await;
    assert_eq!(wait_for(&s.store, "SELECT COUNT(*) FROM outgoing_reports", 1).await, 1);
    // Written with its check: the outbox row points at the MAIL FROM row of spf_checks.
    assert_eq!(
        count(&s.store, "SELECT COUNT(*) FROM outgoing_reports o JOIN spf_checks c ON c.id = o.check_id \
                         WHERE c.identity = 'mail_from' AND c.result = 'fail' AND o.status = 'queued'").await,
        1
    );
    let sink = smtp_sink(Arc::default(), Duration::ZERO).await;
    let (sink, inbox) = (sink.addr, sink.inbox.clone());
    assert_eq!(sender(&s, sink, true).round().await, 1);
    let (from, to, raw) = inbox.lock().unwrap().pop().expect("a report at the sink");
    assert_eq!(from, "<reports@ours.example>");
    assert_eq!(to, "<spf-reports@example.com>");
    assert_eq!(count(&s.store, "SELECT COUNT(*) FROM outgoing_reports WHERE status = 'sent'").await, 1);
    assert_eq!(count(&s.store, "SELECT COUNT(*) FROM report_attempts WHERE outcome = 'sent'").await, 1);

    let text = String::from_utf8(raw.clone()).unwrap();
    let part = &text[text.find("Content-Type: message/feedback-report").expect("a feedback part")..];
    let part_headers = &part[..part.find("\r\n\r\n").unwrap()];
    assert!(part_headers.contains("\r\nContent-Transfer-Encoding: 7bit"), "{part_headers}");
    assert!(!text.contains("quoted-printable"), "{text}");
    let feedback = Feedback::parse_rfc5322(&raw).expect("mail-auth parses the report as ARF");
    assert_eq!(feedback.auth_failure(), AuthFailureType::Spf);
    assert_eq!(feedback.source_ip(), Some("203.0.113.1".parse().unwrap()));
    assert_eq!(feedback.original_mail_from(), Some("<someone@example.com>"));
    assert_eq!(feedback.original_rcpt_to(), Some("<victim@ours.example>"));
    assert_eq!(feedback.reported_domain(), &["example.com"]);
    assert!(feedback.spf_dns().unwrap().contains("v=spf1 ip4:192.0.2.0/24 -all ra=spf-reports"), "{text}");
    assert!(text.contains("Mechanism that decided: -all"), "{text}");
    assert!(text.contains("text/rfc822-headers") && text.contains("Received-SPF: fail"), "{text}");

    // Both DKIM signatures verify against the keys published in the test DNS.
    assert_eq!(mail_auth_verifies(s.dns.addr, &raw).await, 2);
    dkimpy_verifies(&raw, &[("rsa", "rsa2048.pub.b64", "rsa"), ("ed", "ed25519.pub.b64", "ed25519")]);
}

#[tokio::test]
async fn a_flood_of_failures_gives_exactly_the_rate_limit() {
    let s = setup("2/1d").await;
    fail_checks(s.policy, "flood@example.com", 300).await;
    assert_eq!(wait_for(&s.store, "SELECT COUNT(*) FROM spf_checks WHERE identity = 'mail_from'", 300).await, 300);
    assert_eq!(count(&s.store, "SELECT COUNT(*) FROM outgoing_reports").await, 2);
    assert_eq!(count(&s.store, "SELECT SUM(count) FROM rate_limits WHERE key = 'spf-report:spf-reports@example.com'").await, 2);
    // A domain without ra= never gets one.
    fail_checks(s.policy, "x@quiet.example", 5).await;
    assert_eq!(wait_for(&s.store, "SELECT COUNT(*) FROM spf_checks WHERE domain = 'quiet.example'", 5).await, 5);
    assert_eq!(count(&s.store, "SELECT COUNT(*) FROM outgoing_reports").await, 2);
}

#[tokio::test]
async fn a_deferring_relay_gets_the_report_again_and_every_attempt_is_recorded() {
    let s = setup("1/1d").await;
    fail_checks(s.policy, "someone@example.com", 1).await;
    assert_eq!(wait_for(&s.store, "SELECT COUNT(*) FROM outgoing_reports", 1).await, 1);
    let codes = Arc::new(Mutex::new(VecDeque::from([451u16])));
    let sink = smtp_sink(codes, Duration::ZERO).await;
    let (sink, inbox) = (sink.addr, sink.inbox.clone());
    let sender = sender(&s, sink, true);
    assert_eq!(sender.round().await, 1);
    assert!(inbox.lock().unwrap().is_empty());
    assert_eq!(count(&s.store, "SELECT COUNT(*) FROM outgoing_reports WHERE status = 'queued' AND attempts = 1 AND next_attempt_at > datetime('now')").await, 1);
    // Not due yet: nothing is claimed.
    assert_eq!(sender.round().await, 0);
    sqlx::query("UPDATE outgoing_reports SET next_attempt_at = datetime('now', '-1 second')").execute(s.store.sqlite_pool().unwrap()).await.unwrap();
    assert_eq!(sender.round().await, 1);
    assert_eq!(inbox.lock().unwrap().len(), 1);
    assert_eq!(count(&s.store, "SELECT COUNT(*) FROM report_attempts").await, 2);
    assert_eq!(count(&s.store, "SELECT COUNT(*) FROM report_attempts WHERE outcome = 'temporary' AND smtp_code = 451").await, 1);
    assert_eq!(count(&s.store, "SELECT COUNT(*) FROM outgoing_reports WHERE status = 'sent' AND attempts = 2").await, 1);
}

#[tokio::test]
async fn the_kill_switch_stops_sending_and_a_dead_senders_claim_expires() {
    let s = setup("1/1d").await;
    fail_checks(s.policy, "someone@example.com", 1).await;
    assert_eq!(wait_for(&s.store, "SELECT COUNT(*) FROM outgoing_reports", 1).await, 1);
    let sink = smtp_sink(Arc::default(), Duration::ZERO).await;
    let (sink, inbox) = (sink.addr, sink.inbox.clone());
    let off = sender(&s, sink, false).with_idle(Duration::from_millis(20));
    off.run(tokio::time::sleep(Duration::from_millis(200))).await;
    assert!(inbox.lock().unwrap().is_empty());
    assert_eq!(count(&s.store, "SELECT COUNT(*) FROM outgoing_reports WHERE status = 'queued'").await, 1);
    // A sender that claimed the report and died: once its lease is over, the report is delivered.
    sqlx::query("UPDATE outgoing_reports SET status = 'sending', claimed_by = 'dead', claimed_until = datetime('now', '-1 second')")
        .execute(s.store.sqlite_pool().unwrap())
        .await
        .unwrap();
    assert_eq!(sender(&s, sink, true).round().await, 1);
    assert_eq!(inbox.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_hard_bounce_from_the_report_address_suppresses_further_reports() {
    let s = setup("100/1d").await;
    // Our earlier report to the address bounced: the DSN goes through parse, classify and the store
    // like any ingested message.
    let dsn = b"From: MAILER-DAEMON@mx.example.com\r\nTo: reports@ours.example\r\nSubject: Undelivered Mail\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\
--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.com\r\n\r\n\
Final-Recipient: rfc822; SPF-Reports@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n\
Diagnostic-Code: smtp; 550 5.1.1 <SPF-Reports@example.com>: Recipient address rejected: User unknown\r\n\r\n--b--\r\n";
    let parsed = rebound::parse::parse(dsn);
    let classifications = rebound::classify::classify_all(&parsed);
    assert!(classifications.iter().any(|c| c.hard_bounce), "{classifications:?}");
    let message = rebound::store::NewMessage {
        raw: dsn.to_vec(),
        sha256: sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(dsn)).into(),
        source: "test".into(),
        parsed,
        classifications,
        envelope_from: Some(String::new()),
        envelope_to: vec!["reports@ours.example".into()],
    };
    s.store.save_messages(&[message]).await.unwrap();
    fail_checks(s.policy, "someone@example.com", 3).await;
    assert_eq!(wait_for(&s.store, "SELECT COUNT(*) FROM spf_checks WHERE identity = 'mail_from'", 3).await, 3);
    assert_eq!(count(&s.store, "SELECT COUNT(*) FROM outgoing_reports").await, 0);
}

#[tokio::test]
async fn a_failing_helo_identity_is_reported_to_the_domain_that_asked() {
    let s = setup("1/1d").await;
    checks(s.policy, "mx.helo.example", "someone@example.com", 1).await;
    assert_eq!(wait_for(&s.store, "SELECT COUNT(*) FROM outgoing_reports", 2).await, 2);
    // Each report points at the check of its own identity.
    assert_eq!(
        count(&s.store, "SELECT COUNT(*) FROM outgoing_reports o JOIN spf_checks c ON c.id = o.check_id \
                         WHERE c.identity = 'helo' AND c.domain = 'mx.helo.example' \
                         AND o.report_address = 'helo-reports@mx.helo.example'").await,
        1
    );
    assert_eq!(
        count(&s.store, "SELECT COUNT(*) FROM outgoing_reports o JOIN spf_checks c ON c.id = o.check_id \
                         WHERE c.identity = 'mail_from' AND o.report_address = 'spf-reports@example.com'").await,
        1
    );
    let sink = smtp_sink(Arc::default(), Duration::ZERO).await;
    let sender = sender(&s, sink.addr, true);
    assert_eq!(sender.round().await + sender.round().await, 2);
    let inbox = sink.inbox.lock().unwrap().clone();
    let (_, _, raw) = inbox.iter().find(|(_, to, _)| to == "<helo-reports@mx.helo.example>").expect("the HELO report");
    let feedback = Feedback::parse_rfc5322(raw).expect("mail-auth parses the HELO report as ARF");
    assert_eq!(feedback.auth_failure(), AuthFailureType::Spf);
    assert_eq!(feedback.reported_domain(), &["mx.helo.example"]);
    assert!(feedback.spf_dns().unwrap().contains("ra=helo-reports"));
    let text = String::from_utf8_lossy(raw);
    assert!(text.contains("Identity checked: helo postmaster@mx.helo.example"), "{text}");

    // A HELO whose domain publishes no ra= gets no report.
    checks(s.policy, "quiet.example", "x@quiet.example", 1).await;
    assert_eq!(wait_for(&s.store, "SELECT COUNT(*) FROM spf_checks WHERE domain = 'quiet.example'", 2).await, 2);
    assert_eq!(count(&s.store, "SELECT COUNT(*) FROM outgoing_reports").await, 2);
}

#[tokio::test]
async fn helo_and_mail_from_failing_for_one_domain_give_one_report() {
    let s = setup("10/1d").await;
    checks(s.policy, "example.com", "someone@example.com", 1).await;
    assert_eq!(
        wait_for(&s.store, "SELECT COUNT(*) FROM spf_checks WHERE domain = 'example.com' AND result = 'fail'", 2).await,
        2
    );
    assert_eq!(count(&s.store, "SELECT COUNT(*) FROM outgoing_reports").await, 1);
}
