//! Digests of a realistic database: the shared bounce and ARF corpus ingested through parse → classify →
//! store (each bounce re-dated into the last 14 days, so a 7-day digest and its trend have data), plus
//! synthetic SPF checks and outbox rows. Checked against independent SQL on SQLite and, when
//! `REBOUND_TEST_POSTGRES_URL` is set, on Postgres; rendered as text and HTML, and the HTML in headless
//! Chromium (screenshot non-empty, no console errors).
//!
//! Mailed digests go through the report outbox and sender to an SMTP sink on 127.0.0.1 and must arrive as
//! multipart/alternative with valid DKIM signatures; the report metrics are read back from /metrics.
//!
//! Without ../shared/corpus the corpus tests print why they skip; without /usr/bin/chromium the browser test
//! does. `REBOUND_UPDATE_SCREENSHOT=1` copies the browser's screenshot to docs/digest-example.png.

mod spf_support;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, LazyLock, Mutex};

use chrono::{DateTime, Duration, Utc};
use rebound::cli::DbOptions;
use rebound::cli::digest::{DigestArgs, run};
use rebound::digest::{self, Digest, Format, Period, Since, render};
use rebound::digest::mail::Mailer;
use rebound::digest::{DigestConfig, schedule};
use rebound::metrics::{self, MetricsConfig};
use rebound::report::config::SmtpConfig;
use rebound::report::dkim::{Algorithm, DkimKeyConfig};
use rebound::report::sender::Sender;
use rebound::store::spf::{CheckItem, Queued, ReportToQueue, SpfCheckRow};
use rebound::store::{Backend, NewMessage, Store};
use sha2::{Digest as _, Sha256};
use mail_parser::MimeHeaders;
use spf_support::smtp::{dkimpy_verifies, fixture, mail_auth_verifies, public};
use spf_support::{DnsServer, smtp_sink, smtp_sink_by_recipient, start, txt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

use common::db::{TestDb, execute, scalar};

fn corpus() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    if dir.join("bounces/emails").is_dir() {
        Some(dir)
    } else {
        eprintln!("skipping: {} is absent (the shared corpus is read, never copied)", dir.display());
        None
    }
}

/// A time as an SQL literal of the backend.
fn lit(store: &Store, t: DateTime<Utc>) -> String {
    let s = t.format("%Y-%m-%d %H:%M:%S");
    match store.backend() {
        Backend::Sqlite => format!("'{s}'"),
        Backend::Postgres => format!("TIMESTAMPTZ '{s}+00'"),
    }
}

/// Every file of the corpus's bounce mails and ARF reports, sorted.
fn corpus_files(corpus: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(corpus.join("bounces/emails"))
        .into_iter()
        .chain(walkdir::WalkDir::new(corpus.join("arf")))
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "eml"))
        .map(|e| e.into_path())
        .collect();
    files.sort();
    files
}

/// Ingest the corpus through the real pipeline; bounce `i` of file `f` gets a Last-Attempt-Date spread over
/// the 14 days before `now` (the corpus's own dates span twenty years). Returns the number of messages stored.
async fn ingest_corpus(store: &Store, corpus: &Path, now: DateTime<Utc>) -> usize {
    let files = corpus_files(corpus);
    assert!(files.len() > 400, "expected the whole corpus, found {} files", files.len());
    let mut batch = Vec::new();
    for (f, path) in files.iter().enumerate() {
        let raw = std::fs::read(path).expect("read corpus file");
        let mut parsed = rebound::parse::parse(&raw);
        for (i, r) in parsed.recipients.iter_mut().enumerate() {
            let hours_ago = ((f * 7919 + i * 131) % (14 * 24)) as i64;
            r.last_attempt_date = Some((now - Duration::hours(hours_ago) - Duration::minutes(17)).to_rfc2822());
        }
        let classifications = rebound::classify::classify_all(&parsed);
        batch.push(NewMessage {
            sha256: Sha256::digest(&raw).into(),
            raw,
            source: format!("file:{}", path.display()),
            parsed,
            classifications,
            envelope_from: Some(String::new()),
            envelope_to: vec!["bounces@example.org".to_string()],
        });
    }
    let n = batch.len();
    for chunk in batch.chunks(100) {
        store.save_messages(chunk).await.expect("save corpus batch");
    }
    n
}

/// Synthetic SPF checks and outbox rows, `hours` ago each.
async fn add_spf(store: &Store) {
    let ago = |hours: i64| match store.backend() {
        Backend::Sqlite => format!("datetime('now', '-{hours} hours')"),
        Backend::Postgres => format!("now() - interval '{hours} hours'"),
    };
    // (hours ago, ip, identity, domain, result, how many)
    let checks: &[(i64, &str, &str, &str, &str, usize)] = &[
        (3, "203.0.113.7", "mail_from", "example.org", "fail", 5),
        (30, "198.51.100.23", "mail_from", "example.org", "softfail", 3),
        (50, "2001:db8::25", "mail_from", "news.example.net", "permerror", 1),
        (10, "192.0.2.10", "mail_from", "example.org", "pass", 20),
        (10, "192.0.2.10", "helo", "mx.example.org", "none", 4),
        (200, "198.51.100.23", "mail_from", "example.org", "softfail", 2),
        (200, "192.0.2.10", "mail_from", "example.org", "pass", 10),
    ];
    for &(hours, ip, identity, domain, result, n) in checks {
        for k in 0..n {
            execute(
                store,
                &format!(
                    "INSERT INTO spf_checks (checked_at, client_ip, helo, mail_from, identity, domain, result) \
                     VALUES ({}, '{ip}', 'mx.{domain}', 'sender@{domain}', '{identity}', '{domain}', '{result}')",
                    ago(hours + k as i64)
                ),
            )
            .await;
        }
    }
    // (status, last_error, how many)
    let outbox: &[(&str, Option<&str>, usize)] = &[
        ("sent", None, 3),
        ("queued", None, 1),
        ("failed", Some("550 5.1.1 report address unknown"), 1),
        ("suppressed", Some("rate limit 1/1d reached for postmaster@example.org"), 2),
    ];
    for &(status, error, n) in outbox {
        for _ in 0..n {
            let error = error.map_or("NULL".to_string(), |e| format!("'{e}'"));
            execute(
                store,
                &format!(
                    "INSERT INTO outgoing_reports (created_at, kind, domain, report_address, message, status, last_error) \
                     VALUES ({}, 'spf', 'example.org', 'postmaster@example.org', {}, '{status}', {error})",
                    ago(5),
                    match store.backend() {
                        Backend::Sqlite => "X'00'",
                        Backend::Postgres => "'\\x00'::bytea",
                    }
                ),
            )
            .await;
        }
    }
}

/// What a 7-day digest of the corpus database ending at `now` (after the ingestion) must say, checked
/// against independent SQL.
async fn check_corpus_digest(db: &TestDb, now: DateTime<Utc>) -> Digest {
    let store = &db.store;
    let period = Period::ending(now, "7d".parse().unwrap());
    let d = digest::collect(store, period).await.expect("digest");
    let (from, until, before) = (lit(store, period.from), lit(store, period.until), lit(store, period.previous_from()));
    let failures = |a: &str, b: &str| {
        format!(
            "SELECT COUNT(*) FROM bounces WHERE bounced_at >= {a} AND bounced_at < {b} \
             AND reason NOT IN ('delivered', 'vacation', 'feedback')"
        )
    };
    assert!(!d.database_empty && !d.period_empty);
    assert_eq!(d.failures.current, scalar(store, &failures(&from, &until)).await);
    assert_eq!(d.failures.previous, scalar(store, &failures(&before, &from)).await);
    assert!(d.failures.current > 100 && d.failures.previous > 100, "{:?}", d.failures);
    assert_eq!(
        d.hard.current,
        scalar(store, &format!("{} AND hard_bounce", failures(&from, &until))).await,
        "hard bounces"
    );
    assert_eq!(d.hard.current + d.soft.current, d.failures.current);
    assert_eq!(d.reasons.iter().map(|r| r.trend.current).sum::<i64>(), d.failures.current);
    assert_eq!(d.reasons.iter().map(|r| r.trend.previous).sum::<i64>(), d.failures.previous);
    assert!(d.reasons.windows(2).all(|w| w[0].trend.current >= w[1].trend.current), "reasons sorted");
    assert_eq!(d.series.len(), 8, "one point per calendar day the 7 days touch");
    assert_eq!(d.series.iter().map(|p| p.hard + p.soft).sum::<i64>(), d.failures.current);
    assert!(!d.other_events.is_empty(), "the corpus has auto-replies, deliveries or feedback");

    let top = &d.domains[0];
    assert_eq!(
        top.failures,
        scalar(
            store,
            &format!(
                "{} AND recipient_domain = '{}'",
                failures(&from, &until),
                top.name.replace('\'', "''")
            )
        )
        .await
    );
    assert!(d.domains.windows(2).all(|w| w[0].failures >= w[1].failures));
    assert!(top.dominant_count <= top.failures && top.dominant_count > 0);
    assert!(!d.mtas.is_empty());
    assert!(!d.new_domains.is_empty(), "domains seen only in the latest week");

    assert_eq!(
        d.suppression.total,
        scalar(
            store,
            &format!("SELECT COUNT(*) FROM suppression_list WHERE last_bounced_at >= {from} AND last_bounced_at < {until}")
        )
        .await
    );
    assert!(d.suppression.total > 0 && !d.suppression.rows.is_empty());
    assert_eq!(
        d.labelling.total,
        scalar(store, &format!("SELECT COUNT(*) FROM labelling_queue WHERE bounced_at >= {from} AND bounced_at < {until}"))
            .await
    );

    // The synthetic SPF data.
    assert_eq!((d.spf.checks.current, d.spf.checks.previous), (33, 12));
    assert_eq!((d.spf.failures.current, d.spf.failures.previous), (9, 2));
    let top = &d.spf.by_source[0];
    assert_eq!((top.domain.as_str(), top.client_ip.as_str(), top.result.as_str(), top.failures), ("example.org", "203.0.113.7", "fail", 5));
    let mut new: Vec<&str> = d.spf.new_sources.iter().map(|s| s.client_ip.as_str()).collect();
    new.sort();
    assert_eq!(new, ["2001:db8::25", "203.0.113.7"], "198.51.100.23 failed before the period");
    let pass = d.spf.results.iter().find(|r| r.result == "pass").expect("pass row");
    assert_eq!((pass.mail_from, pass.helo), (20, 0));
    let outbox: Vec<(&str, i64)> = d.spf.outbox.iter().map(|n| (n.name.as_str(), n.count)).collect();
    assert_eq!(outbox, [("sent", 3), ("queued", 1), ("failed", 1), ("suppressed", 2)]);
    assert_eq!(d.spf.suppressed_because[0].name, "rate limit 1/1d reached for postmaster@example.org");

    // Incoming reports were all received now.
    let arf = scalar(store, "SELECT COUNT(*) FROM feedback_reports").await;
    assert!(arf > 10, "the corpus has ARF reports");
    assert_eq!(d.incoming.total.current, arf);
    assert!(d.incoming.by_reporter.iter().map(|r| r.reports).sum::<i64>() <= arf);
    assert!(!d.incoming.by_domain.is_empty());
    d
}

/// Text and HTML say the same things; the HTML is self-contained.
fn check_rendering(d: &Digest) -> String {
    let text = render::text(d).expect("text digest");
    let html = render::html(d).expect("HTML digest");
    // minijinja's HTML escaping.
    let escape = |s: &str| {
        s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
            .replace('\'', "&#x27;").replace('/', "&#x2f;")
    };
    for r in d.reasons.iter().take(5) {
        assert!(text.contains(&r.reason) && html.contains(&r.reason), "reason {} missing", r.reason);
    }
    let rate = "rate limit 1/1d reached";
    assert!(text.contains("203.0.113.7") && html.contains("203.0.113.7"));
    assert!(text.contains(rate) && html.contains(&escape(rate)), "the suppression reason");
    for s in d.suppression.rows.iter().take(5) {
        assert!(text.contains(&s.recipient), "{} not in the text", s.recipient);
        assert!(html.contains(&escape(&s.recipient)), "{} not in the HTML", s.recipient);
    }
    assert!(text.contains("SUPPRESS THESE ADDRESSES") && html.contains("Suppress these addresses"));
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert_eq!(html.matches("<svg").count(), 2, "two inline charts");
    let lower = html.to_ascii_lowercase();
    for forbidden in ["<script", "<link", "<img", "<iframe", "@import", "url(", " src=", " href="] {
        assert!(!lower.contains(forbidden), "{forbidden} in a self-contained digest");
    }
    html
}

#[tokio::test]
async fn corpus_digest_on_sqlite() {
    let Some(corpus) = corpus() else { return };
    let db = TestDb::sqlite().await;
    let now = Utc::now();
    ingest_corpus(&db.store, &corpus, now).await;
    add_spf(&db.store).await;
    let d = check_corpus_digest(&db, Utc::now() + Duration::seconds(1)).await;
    check_rendering(&d);
}

#[tokio::test]
async fn corpus_digest_on_postgres() {
    let Some(corpus) = corpus() else { return };
    let Some(db) = TestDb::postgres("corpus").await else { return };
    let now = Utc::now();
    ingest_corpus(&db.store, &corpus, now).await;
    add_spf(&db.store).await;
    let d = check_corpus_digest(&db, Utc::now() + Duration::seconds(1)).await;
    check_rendering(&d);
}

async fn empty_database_gives_a_friendly_digest(db: &TestDb) {
    let d = digest::collect(&db.store, Period::ending(Utc::now(), "24h".parse().unwrap())).await.expect("digest");
    assert!(d.database_empty && d.period_empty);
    assert_eq!(d.failures.current, 0);
    assert_eq!(d.series.len(), 25, "every hour the 24 hours touch");
    assert!(d.reasons.is_empty() && d.suppression.rows.is_empty() && d.spf.by_source.is_empty());
    let text = render::text(&d).unwrap();
    assert!(text.contains("Nothing stored yet"), "{text}");
    let html = render::html(&d).unwrap();
    assert!(html.contains("Nothing stored yet"));
    assert!(html.contains("No failures in this period."));
    assert!(!html.contains("<svg"), "no empty charts");
}


#[tokio::test]
async fn quiet_period_in_a_database_with_data_says_so() {
    let db = TestDb::sqlite().await;
    add_spf(&db.store).await;
    // The 24 hours that ended 10 days ago: the SPF checks are all later.
    let until = Utc::now() - Duration::days(10);
    let d = digest::collect(&db.store, Period::ending(until, Since::from_str("24h").unwrap())).await.unwrap();
    assert!(!d.database_empty && d.period_empty, "{d:?}");
    assert_eq!(d.spf.checks.current, 0);
    let text = render::text(&d).unwrap();
    assert!(text.contains("A quiet period"), "{text}");
}

#[tokio::test]
async fn cli_writes_the_digest_file_and_refuses_a_bad_period() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("cli.db").display());
    let out = dir.path().join("digest.html");
    let args = |since: &str| DigestArgs {
        since: since.to_string(),
        until: None,
        format: Format::Html,
        out: Some(out.clone()),
        mail_to: vec![],
        wait: 60,
        db: DbOptions { db: Some(db.clone()), config: None },
    };
    assert_eq!(run(args("7d")).await.unwrap(), 0);
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.contains("the last 7 days") && html.contains("Nothing stored yet"));
    assert_eq!(run(args("7 fortnights")).await.unwrap(), 64);
    assert_eq!(run(args("0h")).await.unwrap(), 64);
    let bad_db = DigestArgs { db: DbOptions { db: Some("mysql://nowhere/x".to_string()), config: None }, ..args("1d") };
    assert_eq!(run(bad_db).await.unwrap(), 64, "an unsupported database URL is a usage error");
}

/// Render the corpus digest in headless Chromium: the screenshot is non-empty and the page logs no console
/// message (errors, blocked fetches, CSP or parse complaints all show up there).
#[tokio::test]
async fn html_digest_renders_in_headless_chromium() {
    let chromium = Path::new("/usr/bin/chromium");
    if !chromium.exists() {
        eprintln!("skipping: /usr/bin/chromium is absent (apt-get install chromium)");
        return;
    }
    let Some(corpus) = corpus() else { return };
    let db = TestDb::sqlite().await;
    let now = Utc::now();
    ingest_corpus(&db.store, &corpus, now).await;
    add_spf(&db.store).await;
    let d = check_corpus_digest(&db, Utc::now() + Duration::seconds(1)).await;
    let html = check_rendering(&d);

    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("digest.html");
    let png = dir.path().join("digest.png");
    std::fs::write(&page, &html).unwrap();
    let output = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", dir.path().join("profile").display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1200,2400")
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "chromium failed: {stderr}");
    let console: Vec<&str> = stderr.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(bytes.len() > 20_000, "a screenshot with content, got {} bytes", bytes.len());
    if std::env::var_os("REBOUND_UPDATE_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/digest-example.png");
        std::fs::copy(&png, &docs).expect("copy screenshot to docs/");
        eprintln!("screenshot written to {}", docs.display());
    }
}


// ---------------------------------------------------------------------------------------------------
// Mailed digests, through the report outbox and sender, to an SMTP sink on 127.0.0.1.

/// Tests that queue or deliver outbox entries run one at a time, so the report metrics (one registry per
/// process) move only because of the test that reads them.
static OUTBOX: LazyLock<tokio::sync::Mutex<()>> = LazyLock::new(|| tokio::sync::Mutex::new(()));

/// The DKIM test keys as `[dkim.rsa]` and `[dkim.ed]`.
fn dkim_keys() -> BTreeMap<String, DkimKeyConfig> {
    [("rsa", "rsa2048.pem", Algorithm::RsaSha256), ("ed", "ed25519.pem", Algorithm::Ed25519Sha256)]
        .into_iter()
        .map(|(name, file, algorithm)| {
            let config =
                DkimKeyConfig { domain: "ours.example".into(), selector: name.into(), key: fixture(file), algorithm };
            (name.to_string(), config)
        })
        .collect()
}

/// A DNS server publishing the public halves of [`dkim_keys`].
async fn dkim_zone() -> DnsServer {
    start(&[
        ("rsa._domainkey.ours.example", txt(&format!("v=DKIM1; k=rsa; p={}", public("rsa2048.pub.b64")))),
        ("ed._domainkey.ours.example", txt(&format!("v=DKIM1; k=ed25519; p={}", public("ed25519.pub.b64")))),
    ])
    .await
}

fn mail_config(to: &[&str]) -> DigestConfig {
    DigestConfig {
        schedule: "daily 07:00".parse().unwrap(),
        to: to.iter().map(|s| s.to_string()).collect(),
        from: "digests@ours.example".into(),
        sign: vec!["rsa".into(), "ed".into()],
        ..DigestConfig::default()
    }
}

/// `GET /metrics` from a metrics server started for the call.
async fn scrape() -> String {
    let listener = metrics::bind(&MetricsConfig { listen: "127.0.0.1:0".parse().unwrap() }).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(metrics::serve(listener, None, async {
        let _ = stopped.await;
    }));
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), conn.read_to_string(&mut response))
        .await
        .expect("a response within 10 s")
        .unwrap();
    let _ = stop.send(());
    server.await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// The value of the sample `series` (name and labels as written) in an exposition.
fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{series} not in /metrics"))
        .parse()
        .unwrap()
}

/// A mailed digest as the relay got it: multipart/alternative with the text digest and the HTML digest of
/// `d` as its two parts, and every DKIM signature valid (mail-auth against `dns`, and dkimpy).
async fn check_mailed(raw: &[u8], d: &Digest, dns: &DnsServer, signatures: usize) {
    let message = mail_parser::MessageParser::default().parse(raw).expect("the digest parses as a message");
    let content_type = message.content_type().expect("a Content-Type");
    assert_eq!((content_type.ctype(), content_type.subtype()), ("multipart", Some("alternative")));
    assert_eq!((message.text_body_count(), message.html_body_count()), (1, 1));
    let same = |a: &str, b: &str| a.replace("\r\n", "\n").trim_end() == b.replace("\r\n", "\n").trim_end();
    assert!(same(&message.body_text(0).unwrap(), &render::text(d).unwrap()), "the text part is the text digest");
    assert!(same(&message.body_html(0).unwrap(), &render::html(d).unwrap()), "the HTML part is the HTML digest");
    assert!(message.subject().unwrap().starts_with("rebound digest"), "{:?}", message.subject());
    assert_eq!(message.header_raw("Auto-Submitted").map(str::trim), Some("auto-generated"));
    assert_eq!(mail_auth_verifies(dns.addr, raw).await, signatures);
    let keys = [("rsa", "rsa2048.pub.b64", "rsa"), ("ed", "ed25519.pub.b64", "ed25519")];
    dkimpy_verifies(raw, &keys[..signatures]);
}

/// A scheduled digest made by two processes at once is queued once per recipient; the report sender
/// delivers it (one accepted, one refused, one deferred for a retry), every attempt is recorded, and
/// /metrics counts each step.
async fn scheduled_digest_is_mailed_once(db: &TestDb, second: Store) {
    let _outbox = OUTBOX.lock().await;
    let store = &db.store;
    let dns = dkim_zone().await;
    let config = mail_config(&["ops@example.com", "refused@example.com", "later@example.com"]);
    let mailer = Mailer::from_config(&config, &dkim_keys(), &[]).expect("mailer");
    let before = scrape().await;

    let (since, due) = ("24h".parse::<Since>().unwrap(), Utc::now());
    let (a, b) = tokio::join!(
        schedule::make(store, &config, Some(&mailer), since, due),
        schedule::make(&second, &config, Some(&mailer), since, due),
    );
    a.expect("first process");
    b.expect("second process");
    assert_eq!(scalar(store, "SELECT COUNT(*) FROM outgoing_reports WHERE kind = 'digest' AND status = 'queued'").await, 3);
    assert_eq!(scalar(store, "SELECT COUNT(DISTINCT report_address) FROM outgoing_reports WHERE kind = 'digest'").await, 3);

    let codes = [("refused@example.com".to_string(), 550), ("later@example.com".to_string(), 451)];
    let sink = smtp_sink_by_recipient(codes.into_iter().collect()).await;
    let smtp = SmtpConfig { relay: sink.addr.to_string(), ..SmtpConfig::default() };
    let sender = Sender::new(store.clone(), &smtp, mailer.from_address(), 8, Arc::new(AtomicBool::new(true))).unwrap();
    // The sender claims one report per round (its lease covers a single delivery).
    let mut attempted = 0;
    for _ in 0..3 {
        attempted += sender.round().await;
    }
    assert_eq!(attempted, 3);

    let status = |address: &str| {
        format!("SELECT COUNT(*) FROM outgoing_reports WHERE kind = 'digest' AND report_address = '{address}' AND ")
    };
    assert_eq!(scalar(store, &format!("{} status = 'sent' AND attempts = 1", status("ops@example.com"))).await, 1);
    assert_eq!(scalar(store, &format!("{} status = 'failed'", status("refused@example.com"))).await, 1);
    assert_eq!(scalar(store, &format!("{} status = 'queued' AND attempts = 1", status("later@example.com"))).await, 1);
    assert_eq!(
        scalar(store, "SELECT COUNT(*) FROM report_attempts a JOIN outgoing_reports o ON o.id = a.report_id WHERE o.kind = 'digest'").await,
        3
    );

    let after = scrape().await;
    let delta = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(delta("rebound_reports_total{event=\"queued\"}"), 3.0);
    assert_eq!(delta("rebound_reports_total{event=\"sent\"}"), 1.0);
    assert_eq!(delta("rebound_reports_total{event=\"failed\"}"), 1.0);
    assert_eq!(sample(&after, "rebound_report_queue_depth"), 1.0, "the deferred digest waits in the outbox");

    let (from, to, raw) = sink.inbox.lock().unwrap().pop().expect("the accepted digest at the sink");
    assert_eq!((from.as_str(), to.as_str()), ("<digests@ours.example>", "<ops@example.com>"));
    let d = digest::collect(store, Period::ending(due, since)).await.unwrap();
    check_mailed(&raw, &d, &dns, 2).await;
}

#[tokio::test]
async fn scheduled_digest_is_mailed_once_on_sqlite() {
    let db = TestDb::sqlite().await;
    let second = db.store.clone();
    scheduled_digest_is_mailed_once(&db, second).await;
}

#[tokio::test]
async fn scheduled_digest_is_mailed_once_on_postgres() {
    let Some(db) = TestDb::postgres("mailed").await else { return };
    // A second pool on the same schema: another `rebound serve` sharing the database.
    let second = Store::open(&db.url).await.expect("second connection");
    scheduled_digest_is_mailed_once(&db, second.clone()).await;
    second.close().await;
}

#[tokio::test]
async fn cli_mails_the_digest_through_the_relay() {
    let _outbox = OUTBOX.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cli.db").display());
    let dns = dkim_zone().await;
    let sink = smtp_sink(Arc::new(Mutex::new(VecDeque::from([250u16, 550]))), std::time::Duration::ZERO).await;
    let config = dir.path().join("rebound.toml");
    let write_config = |from: &str| {
        std::fs::write(
            &config,
            format!(
                "[database]\nurl = \"{url}\"\n[smtp]\nrelay = \"{}\"\ntimeout_secs = 5\n\
                 [dkim.rsa]\ndomain = \"ours.example\"\nselector = \"rsa\"\nkey = \"{}\"\nalgorithm = \"rsa-sha256\"\n\
                 [digest]\nfrom = \"{from}\"\nsign = [\"rsa\"]\n",
                sink.addr,
                fixture("rsa2048.pem").display()
            ),
        )
        .unwrap()
    };
    write_config("digests@ours.example");
    let args = |to: &str| DigestArgs {
        since: "7d".to_string(),
        until: None,
        format: Format::Text,
        out: None,
        mail_to: vec![to.to_string()],
        wait: 30,
        db: DbOptions { db: None, config: Some(config.clone()) },
    };
    assert_eq!(run(args("ops@example.com")).await.unwrap(), 0, "delivered at once");
    let (_, to, raw) = sink.inbox.lock().unwrap().pop().expect("the digest at the sink");
    assert_eq!(to, "<ops@example.com>");
    let store = Store::open(&url).await.unwrap();
    assert_eq!(scalar(&store, "SELECT COUNT(*) FROM outgoing_reports WHERE kind = 'digest' AND status = 'sent'").await, 1);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("multipart/alternative") && text.contains("Nothing stored yet"), "{text}");
    assert_eq!(mail_auth_verifies(dns.addr, &raw).await, 1);
    dkimpy_verifies(&raw, &[("rsa", "rsa2048.pub.b64", "rsa")]);

    assert_eq!(run(args("refused@example.com")).await.unwrap(), 1, "a refused digest is an error");
    assert_eq!(scalar(&store, "SELECT COUNT(*) FROM outgoing_reports WHERE kind = 'digest' AND status = 'failed'").await, 1);
    assert_eq!(run(args("not an address")).await.unwrap(), 64);
    write_config("");
    assert_eq!(run(args("ops@example.com")).await.unwrap(), 64, "mailing needs [digest] from");
    store.close().await;
}

/// SPF reports refused by the per-address limit are counted (in the writer's transaction) and the digest
/// shows the figure beside sent and suppressed.
async fn rate_limited_reports_are_in_the_digest(db: &TestDb) {
    let row = SpfCheckRow {
        client_ip: "203.0.113.7".into(),
        record: Some("v=spf1 -all ra=spf".into()),
        action: Some("reject".into()),
        ..spf_support::failed_check("example.org", "someone@example.org")
    };
    let item = |message: &[u8]| CheckItem {
        rows: vec![row.clone()],
        reports: vec![ReportToQueue {
            row: 0,
            kind: "spf-failure",
            domain: "example.org".into(),
            address: "spf@example.org".into(),
            mail_from: "someone@example.org".into(),
            message: message.to_vec(),
            per_address: 1,
            period: std::time::Duration::from_secs(86_400),
            max_per_hour: 100,
        }],
    };
    // The last one was not even built: the writer saw the limit reached before signing.
    let items = [item(b"report 1"), item(b"report 2"), item(b"report 3"), item(b"")];
    let outcomes: Vec<_> = db.store.save_spf_checks(&items).await.unwrap().into_iter().map(|(_, q)| q).collect();
    assert!(matches!(outcomes[0][..], [Queued::Queued(_)]), "{outcomes:?}");
    assert!(outcomes[1..].iter().all(|q| q[..] == [Queued::RateLimited]), "{outcomes:?}");

    let d = digest::collect(&db.store, Period::ending(Utc::now() + Duration::seconds(1), "24h".parse().unwrap())).await.unwrap();
    assert_eq!(d.spf.rate_limited, 3);
    let outbox: Vec<(&str, i64)> = d.spf.outbox.iter().map(|n| (n.name.as_str(), n.count)).collect();
    assert_eq!(outbox, [("queued", 1)]);
    assert_eq!(d.spf.suppressed_because[0].name, "the per-address rate limit");
    assert_eq!(d.spf.suppressed_because[0].count, 3);
    let text = render::text(&d).unwrap();
    assert!(text.contains("queued 1, rate-limited 3"), "{text}");
    assert!(render::html(&d).unwrap().contains("rate-limited 3"));
}

on_both_backends!(empty_database_gives_a_friendly_digest, rate_limited_reports_are_in_the_digest);
