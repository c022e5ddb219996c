//! `rebound digest`: the digest of a period, as HTML or text, to stdout or a file, or mailed
//! (`--mail-to`): queued in the report outbox and delivered at once through the `[smtp]` relay.

use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use clap::Args;

use super::DbOptions;
use crate::config::Config;
use crate::digest::mail::{self, Mailer};
use crate::digest::{self, DigestError, Format, Period, Since};
use crate::exit;
use crate::report::sender::{Sender, lease};
use crate::store::spf::AttemptOutcome;
use crate::store::{Store, StoreErrorKind};

/// Arguments of `rebound digest`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:\n  rebound digest --since 24h\n  rebound digest --since 7d --format html --out digest.html\n  rebound digest --since 30d --until 2026-12-01 --db postgres://rebound@localhost/rebound\n  rebound digest --since 7d --config /etc/rebound.toml --mail-to ops@example.com\n\n--mail-to needs [digest] from (and [smtp] relay, [dkim.NAME] keys) in --config. The message is queued\nin the outbox and delivered at once; if the relay defers it or does not answer within --wait, it stays\nqueued and the sender of `rebound serve` retries it.")]
pub struct DigestArgs {
    /// The period: the last 90m, 24h, 7d, 2w, ... (compared with the same length before it).
    #[arg(long, default_value = "24h", value_name = "PERIOD")]
    pub since: String,
    /// End of the period (UTC): 2026-12-01, "2026-12-01 07:00" or RFC 3339 [default: now].
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// html: one self-contained page (inline CSS and SVG charts); text: plain text.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Write the digest to FILE (atomically) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Mail the digest (text and HTML, DKIM-signed) to ADDR; repeat for several recipients. Nothing is
    /// printed to stdout unless --out is given too.
    #[arg(long, value_name = "ADDR")]
    pub mail_to: Vec<String>,
    /// With --mail-to: how long to wait for the relay before leaving delivery to `rebound serve`.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub wait: u64,
    /// The database (--db, REBOUND_DB, [database] url of --config) and the configuration file.
    #[command(flatten)]
    pub db: DbOptions,
}

/// Run `rebound digest`; returns the exit code (0; 64 for a bad argument, configuration or database URL;
/// 75 when the database is temporarily unavailable; 1 otherwise, e.g. a relay that refused the digest)
/// after printing any error to stderr.
pub async fn run(args: DigestArgs) -> anyhow::Result<i32> {
    let config = match args.db.resolve() {
        Ok(c) => c,
        Err(f) => {
            eprintln!("rebound digest: {:#}", f.error);
            return Ok(f.code);
        }
    };
    let prepared = period(&args).and_then(|p| mailer(&args, &config).map(|m| (p, m)));
    let (period, mailer) = match prepared {
        Ok(p) => p,
        Err(e) => {
            eprintln!("rebound digest: {e}");
            return Ok(exit::USAGE);
        }
    };
    match make(&args, &config, period, mailer.as_ref()).await {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("rebound digest: {e}");
            Ok(if e.is_temporary() {
                exit::TEMPFAIL
            } else if matches!(&e, DigestError::Config(_))
                || matches!(&e, DigestError::Store(s) if s.kind() == StoreErrorKind::Config)
            {
                exit::USAGE
            } else {
                1
            })
        }
    }
}

fn period(args: &DigestArgs) -> Result<Period, DigestError> {
    let since: Since = args.since.parse()?;
    let until = match &args.until {
        Some(t) => digest::parse_time(t)?,
        None => Utc::now(),
    };
    Ok(Period::ending(until, since))
}

/// The mailer when `--mail-to` is given: the addresses, `[digest] from`, the keys and the relay checked.
fn mailer(args: &DigestArgs, config: &Config) -> Result<Option<Mailer>, DigestError> {
    if args.mail_to.is_empty() {
        return Ok(None);
    }
    if let Some(bad) = args.mail_to.iter().find(|a| !mail::valid_address(a)) {
        return Err(DigestError::Config(format!("--mail-to {bad:?} is not a mail address")));
    }
    config.smtp.validate().map_err(|e| DigestError::Config(e.to_string()))?;
    Mailer::from_config(&config.digest, &config.dkim, &config.report.spf.sign).map(Some)
}

async fn make(args: &DigestArgs, config: &Config, period: Period, mailer: Option<&Mailer>) -> Result<i32, DigestError> {
    let store = Store::open(&config.database.url).await?;
    let result = async {
        let d = digest::collect(&store, period).await?;
        let document = match (&args.out, mailer) {
            (None, Some(_)) => None,
            _ => Some(match args.format {
                Format::Html => digest::render::html(&d)?,
                Format::Text => digest::render::text(&d)?,
            }),
        };
        let code = match mailer {
            Some(mailer) => send(&store, config, mailer, &d, &args.mail_to, Duration::from_secs(args.wait)).await?,
            None => exit::OK,
        };
        Ok::<_, DigestError>((document, code))
    }
    .await;
    store.close().await;
    let (document, code) = result?;
    match (&args.out, document) {
        (Some(path), Some(document)) => digest::schedule::write_atomically(path, &document)?,
        (None, Some(document)) => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(document.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|source| DigestError::Write { path: PathBuf::from("(stdout)"), source })?;
        }
        (_, None) => {}
    }
    Ok(code)
}

/// Queues the digest for every recipient, then delivers each one now, waiting at most `wait` for each.
/// A deferred or unanswered delivery stays in the outbox for `serve`; a refused one makes the exit code 1.
async fn send(
    store: &Store,
    config: &Config,
    mailer: &Mailer,
    d: &digest::Digest,
    to: &[String],
    wait: Duration,
) -> Result<i32, DigestError> {
    let ids = mailer.queue(store, d, to, None).await?;
    let sender = Sender::new(
        store.clone(),
        &config.smtp,
        mail::envelope_sender(config, mailer),
        config.report.spf.max_attempts,
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
    )
    .map_err(|e| DigestError::Config(e.to_string()))?;
    let worker = format!("{}:{}:digest", crate::spf::config::host_name(), std::process::id());
    let mut code = exit::OK;
    for (id, rcpt) in ids.iter().zip(to) {
        let Some(claimed) = mail::claim(store, *id, &worker, lease(config.smtp.timeout_secs)).await? else {
            eprintln!("rebound digest: {rcpt}: outbox entry {id} was taken by another sender");
            continue;
        };
        match tokio::time::timeout(wait, sender.deliver(claimed)).await {
            Ok(AttemptOutcome::Sent) => eprintln!("rebound digest: mailed to {rcpt} (outbox entry {id})"),
            Ok(AttemptOutcome::Temporary) => {
                eprintln!("rebound digest: {rcpt}: the relay deferred the digest; it stays queued (outbox entry {id}) and `rebound serve` retries it")
            }
            Ok(AttemptOutcome::Permanent) => {
                eprintln!("rebound digest: {rcpt}: the relay refused the digest (outbox entry {id}, see report_attempts)");
                code = 1;
            }
            Err(_) => eprintln!(
                "rebound digest: {rcpt}: no answer from the relay within {}s; outbox entry {id} is retried by `rebound serve` once its claim expires",
                wait.as_secs()
            ),
        }
    }
    Ok(code)
}
