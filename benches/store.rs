//! Store-alone throughput: messages per second through `Store::save_messages` with one message per
//! transaction against 64 per transaction, on a SQLite file (WAL, synchronous=FULL) and, when
//! `REBOUND_TEST_POSTGRES_URL` is set, on Postgres (in a schema of its own, dropped afterwards).
//!
//! `cargo bench --bench store` (`REBOUND_BENCH_MESSAGES=N` changes the message count per run, default 2048;
//! a quarter of that for single-message transactions). Each case runs three times; the median is reported.
//! Messages are synthetic DSNs of ~1.5 KB with two recipients each; every one is new (no duplicates).

use std::str::FromStr;
use std::time::Instant;

use rebound::classify::{Classification, DecidedBy};
use rebound::parse::{Kind, Parsed, Recipient};
use rebound::store::{NewMessage, Store};
use sha2::{Digest, Sha256};
use sqlx::{Connection, Executor};

/// (messages per transaction, concurrent writers): one writer with 1 and 64 messages per transaction, and
/// 8 writers with 1 each (what 8 LMTP sessions committing separately would do).
const CASES: [(usize, usize); 3] = [(1, 1), (64, 1), (1, 8)];

fn message(run: &str, i: usize) -> NewMessage {
    let raw = format!(
        "From: MAILER-DAEMON@mx.example.net\r\nTo: bounces@example.org\r\nSubject: Undelivered Mail\r\n\
         Message-ID: <{run}.{i}@mx.example.net>\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n\r\n{}\r\n--b--\r\n",
        "This is the mail system at host mx.example.net. I'm sorry to have to inform you ... ".repeat(16)
    )
    .into_bytes();
    let recipient = |n: usize| Recipient {
        recipient: format!("user{i}.{n}@example{}.com", i % 50),
        action: Some("failed".into()),
        status: Some("5.1.1".into()),
        reply_code: Some(550),
        diagnostic_type: Some("smtp".into()),
        diagnostic: Some("550 5.1.1 <user@example.com>: Recipient address rejected: User unknown".into()),
        remote_mta: Some(format!("mx{}.example.com", i % 7)),
        reporting_mta: Some("mx.example.net".into()),
        last_attempt_date: Some("Mon, 30 Nov 2026 10:00:00 +0000".into()),
        ..Recipient::default()
    };
    let classification =
        Classification { reason: "userunknown".into(), hard_bounce: true, confidence: 0.9, decided_by: DecidedBy::Status };
    NewMessage {
        sha256: Sha256::digest(&raw).into(),
        raw,
        source: "lmtp".into(),
        parsed: Parsed {
            kind: Kind::Dsn,
            message_id: Some(format!("<{run}.{i}@mx.example.net>")),
            from: Some("MAILER-DAEMON@mx.example.net".into()),
            subject: Some("Undelivered Mail".into()),
            date: Some("Mon, 30 Nov 2026 10:00:00 +0000".into()),
            original: None,
            recipients: vec![recipient(0), recipient(1)],
            feedback: None,
            parse_error: None,
        },
        classifications: vec![classification.clone(), classification],
        envelope_from: Some(String::new()),
        envelope_to: vec!["bounces@example.org".into()],
    }
}

/// Save `count` new messages in batches of `batch`, from `writers` concurrent tasks; messages per second.
async fn run(store: &Store, label: &str, batch: usize, writers: usize, count: usize) -> anyhow::Result<f64> {
    let messages: Vec<NewMessage> =
        (0..count).map(|i| message(&format!("{label}-{batch}-{writers}-{}", rand_tag()), i)).collect();
    let per_writer = count.div_ceil(writers);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for part in messages.chunks(per_writer).map(<[NewMessage]>::to_vec) {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for chunk in part.chunks(batch) {
                store.save_messages(chunk).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

/// A tag that makes every run's messages new.
fn rand_tag() -> u64 {
    rand::random()
}

/// The median of three runs of each case.
async fn bench(store: &Store, label: &str, count: usize) -> anyhow::Result<()> {
    let mut medians = Vec::new();
    for (batch, writers) in CASES {
        // Fewer single-message transactions: each one is a synced commit.
        let n = if batch == 1 { count / 4 } else { count };
        let mut rates = Vec::new();
        for _ in 0..3 {
            rates.push(run(store, label, batch, writers, n).await?);
        }
        rates.sort_by(f64::total_cmp);
        println!(
            "{label:<9} batch {batch:>3}, {writers} writer(s): {n:>6} messages, median {:>6.0} msg/s (runs {:.0} {:.0} {:.0})",
            rates[1], rates[0], rates[1], rates[2]
        );
        medians.push(rates[1]);
    }
    println!("{label:<9} batch 64 / batch 1 (one writer) = {:.1}x", medians[1] / medians[0]);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let count: usize = std::env::var("REBOUND_BENCH_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(2048);

    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = Store::open(&url).await?;
    bench(&store, "sqlite", count).await?;
    store.close().await;

    match std::env::var("REBOUND_TEST_POSTGRES_URL") {
        Err(_) => println!("postgres  skipped: REBOUND_TEST_POSTGRES_URL is not set"),
        Ok(url) => {
            let schema = format!("rebound_bench_{}", std::process::id());
            let mut admin = sqlx::PgConnection::connect(&url).await?;
            admin.execute(format!("CREATE SCHEMA {schema}").as_str()).await?;
            let options = sqlx::postgres::PgConnectOptions::from_str(&url)?.options([("search_path", &schema)]);
            let result = async {
                let store = Store::connect_postgres(options).await?;
                store.migrate().await?;
                bench(&store, "postgres", count).await?;
                store.close().await;
                anyhow::Ok(())
            }
            .await;
            admin.execute(format!("DROP SCHEMA {schema} CASCADE").as_str()).await?;
            result?;
        }
    }
    Ok(())
}
