//! `rebound digest`: the digest of a period, as HTML or text, to stdout or a file.

use std::path::PathBuf;

use chrono::Utc;
use clap::Args;

use crate::digest::{self, Format, Period, Since};
use crate::exit;
use crate::store::{Store, StoreErrorKind};

/// Arguments of `rebound digest`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:\n  rebound digest --since 24h\n  rebound digest --since 7d --format html --out digest.html\n  rebound digest --since 30d --until 2026-12-01 --db postgres://rebound@localhost/rebound")]
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
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(long, env = "REBOUND_DB", value_name = "URL", default_value = "sqlite://rebound.db")]
    pub db: String,
}

/// Run `rebound digest`; returns the exit code (0, 64 for a bad argument or database URL, 75 when the
/// database is temporarily unavailable, 1 otherwise) after printing any error to stderr.
pub async fn run(args: DigestArgs) -> anyhow::Result<i32> {
    let period = match period(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("rebound digest: {e}");
            return Ok(exit::USAGE);
        }
    };
    match make(&args, period).await {
        Ok(()) => Ok(exit::OK),
        Err(e) => {
            eprintln!("rebound digest: {e}");
            Ok(if e.is_temporary() {
                exit::TEMPFAIL
            } else if matches!(&e, digest::DigestError::Config(_))
                || matches!(&e, digest::DigestError::Store(s) if s.kind() == StoreErrorKind::Config)
            {
                exit::USAGE
            } else {
                1
            })
        }
    }
}

fn period(args: &DigestArgs) -> Result<Period, digest::DigestError> {
    let since: Since = args.since.parse()?;
    let until = match &args.until {
        Some(t) => digest::parse_time(t)?,
        None => Utc::now(),
    };
    Ok(Period::ending(until, since))
}

async fn make(args: &DigestArgs, period: Period) -> Result<(), digest::DigestError> {
    let store = Store::open(&args.db).await?;
    let result = async {
        let d = digest::collect(&store, period).await?;
        match args.format {
            Format::Html => digest::render::html(&d),
            Format::Text => digest::render::text(&d),
        }
    }
    .await;
    store.close().await;
    let document = result?;
    match &args.out {
        Some(path) => digest::schedule::write_atomically(path, &document),
        None => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(document.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|source| digest::DigestError::Write { path: PathBuf::from("(stdout)"), source })
        }
    }
}
