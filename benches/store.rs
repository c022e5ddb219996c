//! Store-alone throughput: messages per second through `Store::save_messages` with one message per
//! transaction against 64 per transaction, on a SQLite file (WAL, synchronous=FULL) and, when
//! `REBOUND_TEST_POSTGRES_URL` is set, on Postgres (in a schema of its own, dropped afterwards).
//!
//! `cargo bench --bench store` (`REBOUND_BENCH_MESSAGES=N` changes the message count per run, default 2048).
//! Messages are synthetic DSNs of ~1.5 KB with two recipients each; every one is new (no duplicates).

use std::str::FromStr;
use std::time::Instant;

use rebound::classify::{Classification, DecidedBy};
use rebound::parse::{Kind, Parsed, Recipient};
use rebound::store::{NewMessage, Store};
use sha2::{Digest, Sha256};
use sqlx::{Connection, Executor};

const BATCH_SIZES: [usize; 2] = [1, 64];

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

/// Save `count` new messages in batches of `batch`; messages per second.
async fn run(store: &Store, label: &str, batch: usize, count: usize) -> anyhow::Result<f64> {
    let messages: Vec<NewMessage> = (0..count).map(|i| message(&format!("{label}-{batch}"), i)).collect();
    let start = Instant::now();
    for chunk in messages.chunks(batch) {
        store.save_messages(chunk).await?;
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

async fn bench(store: &Store, label: &str, count: usize) -> anyhow::Result<()> {
    let mut rates = Vec::new();
    for batch in BATCH_SIZES {
        // Fewer single-message transactions: each one is a synced commit.
        let n = if batch == 1 { count / 4 } else { count };
        let rate = run(store, label, batch, n).await?;
        println!("{label:<9} batch {batch:>3}: {n:>6} messages, {rate:>9.0} msg/s");
        rates.push(rate);
    }
    println!("{label:<9} batch 64 / batch 1 = {:.1}x", rates[1] / rates[0]);
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
