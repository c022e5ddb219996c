//! Digest generation over a large SQLite database (issue 3: under 5 s for 1,000,000 stored bounces).
//!
//! Generates the database in a temporary directory with set-based SQL (one transaction): N bounces
//! (default 1,000,000; `REBOUND_BENCH_BOUNCES` to change) over the last 14 days, two per message, across
//! 500 recipient domains, 200 remote MTAs, 16 reasons, ~2% low-confidence; plus 100,000 SPF checks,
//! 5,000 incoming feedback reports and 1,000 outbox rows. Then times a 7-day digest (queries + HTML + text;
//! the previous 7 days are read too, for the trends) against a baseline in the same run: a plain
//! `SELECT COUNT(*) FROM bounces`, and one `GROUP BY reason` over the same 14 days.
//!
//! Run: `nice -n 10 cargo bench --bench digest` (`REBOUND_BENCH_DB=/tmp/b.db` keeps the database).

use std::time::{Duration, Instant};

use chrono::Utc;
use rebound::digest::{self, Period};
use rebound::store::Store;

/// (reason, hard, status, reply code, diagnostic)
const REASONS: &[(&str, bool, &str, i64, &str)] = &[
    ("userunknown", true, "5.1.1", 550, "550 5.1.1 <{r}>: Recipient address rejected: User unknown in virtual mailbox table"),
    ("mailboxfull", false, "4.2.2", 452, "452 4.2.2 The email account that you tried to reach is over quota"),
    ("hostunknown", true, "5.1.2", 550, "Host or domain name not found. Name service error for name={d} type=MX"),
    ("filtered", false, "5.7.1", 550, "550 5.7.1 Message rejected by recipient's filter"),
    ("blocked", false, "5.7.1", 554, "554 5.7.1 Service unavailable; Client host blocked using zen.spamhaus.org"),
    ("spamdetected", false, "5.7.1", 550, "550 5.7.1 Message content rejected as spam"),
    ("ratelimited", false, "4.7.0", 421, "421 4.7.0 Try again later, closing connection (rate limited)"),
    ("expired", false, "4.4.7", 0, "delivery temporarily suspended: connection timed out; message expired"),
    ("policyviolation", false, "5.7.0", 550, "550 5.7.0 Message violates local policy"),
    ("systemerror", false, "4.3.0", 451, "451 4.3.0 Internal server error"),
    ("notaccept", true, "5.1.10", 556, "556 5.1.10 Domain does not accept mail (null MX)"),
    ("authfailure", false, "5.7.26", 550, "550 5.7.26 Unauthenticated email is not accepted: SPF and DKIM fail"),
    ("hasmoved", true, "5.1.6", 551, "551 5.1.6 User has moved; please try <new@{d}>"),
    ("networkerror", false, "4.4.1", 0, "connect to mx.{d}: Connection refused"),
    ("onhold", false, "5.0.0", 550, "550 Administrative prohibition"),
    ("delivered", false, "2.0.0", 250, "250 2.0.0 OK"),
];

fn bounces_wanted() -> i64 {
    std::env::var("REBOUND_BENCH_BOUNCES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000)
}

async fn generate(store: &Store, n: i64) -> Result<(), sqlx::Error> {
    let pool = store.sqlite_pool().expect("SQLite store");
    let now = Utc::now().format("%Y-%m-%d %H:%M:%S").to_string();
    let mut tx = pool.begin().await?;
    sqlx::query("CREATE TEMP TABLE bench_reasons (k INTEGER PRIMARY KEY, reason TEXT, hard INTEGER, status TEXT, reply INTEGER, diag TEXT)")
        .execute(&mut *tx)
        .await?;
    for (k, (reason, hard, status, reply, diag)) in REASONS.iter().enumerate() {
        sqlx::query("INSERT INTO bench_reasons VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(k as i64)
            .bind(*reason)
            .bind(*hard)
            .bind(*status)
            .bind(*reply)
            .bind(*diag)
            .execute(&mut *tx)
            .await?;
    }
    let messages = (n + 1) / 2;
    sqlx::query(
        "WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < $1 - 1)
         INSERT INTO messages (id, sha256, received_at, source, kind, size, envelope_from, raw)
         SELECT i + 1, printf('%064d', i), datetime($2, '-' || ((i * 7919) % 1209600) || ' seconds'),
                'lmtp', 'dsn', 2048, '', x'00'
         FROM seq",
    )
    .bind(messages)
    .bind(&now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < $1 - 1)
         INSERT INTO bounces (message_id, position, recipient, recipient_domain, action, status, reply_code,
                              diagnostic_type, diagnostic, smtp_command, remote_mta, reporting_mta, reason,
                              hard_bounce, confidence, decided_by, bounced_at)
         SELECT i / 2 + 1, i % 2,
                'user' || ((i * 48271) % 300000) || '@' || d, d,
                CASE WHEN r.reason = 'delivered' THEN 'delivered' ELSE 'failed' END,
                r.status, NULLIF(r.reply, 0), 'smtp',
                replace(replace(r.diag, '{r}', 'user' || ((i * 48271) % 300000) || '@' || d), '{d}', d),
                'RCPT', 'mx' || (i % 4) || '.provider' || (((i * 31) % 500) % 50) || '.net', 'mx.example.org',
                r.reason, r.hard, CASE WHEN i % 50 = 0 THEN 0.31 ELSE 0.96 END, 'model',
                datetime($2, '-' || (((i / 2) * 7919) % 1209600) || ' seconds')
         FROM (SELECT i, 'domain' || ((i * 31) % 500) || '.example' AS d, (i * 13 + i / 7) % 16 AS k FROM seq) AS s
         JOIN bench_reasons r ON r.k = s.k",
    )
    .bind(n)
    .bind(&now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < 99999)
         INSERT INTO spf_checks (checked_at, client_ip, helo, mail_from, identity, domain, result)
         SELECT datetime($1, '-' || ((i * 7919) % 1209600) || ' seconds'),
                '198.51.' || (i % 200) || '.' || ((i * 7) % 250), 'mx' || (i % 300) || '.sender.example',
                'bounce@sender' || (i % 300) || '.example', CASE WHEN i % 3 = 0 THEN 'helo' ELSE 'mail_from' END,
                'sender' || (i % 300) || '.example',
                CASE WHEN i % 10 < 7 THEN 'pass' WHEN i % 10 = 7 THEN 'fail' WHEN i % 10 = 8 THEN 'softfail' ELSE 'none' END
         FROM seq",
    )
    .bind(&now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < 4999)
         INSERT INTO messages (id, sha256, received_at, source, kind, size, report_from, raw)
         SELECT 10000000 + i, printf('f%063d', i), datetime($1, '-' || ((i * 7919) % 1209600) || ' seconds'),
                'lmtp', 'arf', 1500, 'abuse@reporter' || (i % 20) || '.example', x'00'
         FROM seq",
    )
    .bind(&now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO feedback_reports (message_id, feedback_type, auth_failure, source_ip, reported_domain,
                                       reporting_mta, incidents, has_original, received_at)
         SELECT id, 'auth-failure', 'spf', '203.0.113.' || (id % 250), 'example.org',
                'mx.reporter' || (id % 20) || '.example', 1 + id % 3, 0, received_at
         FROM messages WHERE kind = 'arf'",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < 999)
         INSERT INTO outgoing_reports (created_at, kind, domain, report_address, message, status, last_error)
         SELECT datetime($1, '-' || ((i * 7919) % 1209600) || ' seconds'), 'spf', 'sender' || (i % 300) || '.example',
                'postmaster@sender' || (i % 300) || '.example', x'00',
                CASE WHEN i % 10 < 8 THEN 'sent' WHEN i % 10 = 8 THEN 'suppressed' ELSE 'failed' END,
                CASE WHEN i % 10 = 8 THEN 'rate limit 1/1d reached' END
         FROM seq",
    )
    .bind(&now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    sqlx::query("ANALYZE").execute(pool).await?;
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let n = bounces_wanted();
        let dir = tempfile::tempdir()?;
        // REBOUND_BENCH_DB=PATH keeps the generated database there, or reuses it when it exists (generated
        // less than a week ago, so the 7-day window is full).
        let path: std::path::PathBuf =
            std::env::var_os("REBOUND_BENCH_DB").map_or_else(|| dir.path().join("bench.db"), Into::into);
        let reuse = path.exists();
        let url = format!("sqlite://{}", path.display());
        let store = Store::open(&url).await?;
        let t = Instant::now();
        if !reuse {
            generate(&store, n).await?;
        }
        let pool = store.sqlite_pool().expect("SQLite");
        let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM bounces").fetch_one(pool).await?;
        if reuse {
            println!("reusing {} with {stored} bounces", path.display());
        } else {
            println!("generated {stored} bounces (+100,000 SPF checks, 5,000 reports) in {:.1} s", t.elapsed().as_secs_f64());
        }

        let runs = 3;
        let mut digests = Vec::new();
        let mut sizes = (0, 0);
        for _ in 0..runs {
            let t = Instant::now();
            let d = digest::collect(&store, Period::ending(Utc::now(), "7d".parse()?)).await?;
            let html = digest::render::html(&d)?;
            let text = digest::render::text(&d)?;
            digests.push(t.elapsed());
            sizes = (html.len(), text.len());
            assert!(d.failures.current > 0 && d.failures.previous > 0);
        }
        let mut counts = Vec::new();
        let mut scans = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            let _: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM bounces").fetch_one(pool).await?;
            counts.push(t.elapsed());
            let since = (Utc::now() - chrono::Duration::days(14)).format("%Y-%m-%d %H:%M:%S").to_string();
            let t = Instant::now();
            let _: Vec<(String, i64)> =
                sqlx::query_as("SELECT reason, COUNT(*) FROM bounces WHERE bounced_at >= $1 GROUP BY reason")
                    .bind(since)
                    .fetch_all(pool)
                    .await?;
            scans.push(t.elapsed());
        }
        let (digest, count, scan) = (median(digests), median(counts), median(scans));
        println!("digest 7d (queries + HTML {} KB + text {} KB), median of {runs}: {:.3} s (target < 5 s)",
            sizes.0 / 1024, sizes.1 / 1024, digest.as_secs_f64());
        println!("baseline SELECT COUNT(*) FROM bounces: {:.3} s -> digest / baseline = {:.1}x",
            count.as_secs_f64(), digest.as_secs_f64() / count.as_secs_f64());
        println!("baseline GROUP BY reason over 14 days: {:.3} s -> digest / baseline = {:.1}x",
            scan.as_secs_f64(), digest.as_secs_f64() / scan.as_secs_f64());
        store.close().await;
        Ok(())
    })
}
