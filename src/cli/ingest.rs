//! `rebound ingest [--db URL] PATH...|-`: store messages from files, or one message from stdin.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::Args;

use super::{DbOptions, Failure};
use crate::exit;
use crate::ingest::import;
use crate::ingest::stdin::{self, StdinError};
use crate::ingest::writer::Writer;
use crate::store::{SaveOutcome, Store, redact_url};

/// Arguments of `rebound ingest`.
#[derive(Debug, Args)]
#[command(after_help = "\
Each message counts as stored only after its transaction commits. A file that cannot be read or is over \
[ingest.lmtp] max_message_size is reported and skipped (exit 65, the other files are still stored); a \
database failure stops the import (exit 75). A message that cannot be parsed is stored as `unparsed`.

Examples:
  rebound ingest bounce.eml                     one file
  rebound ingest ~/Maildir archive/2026.mbox    a Maildir (cur/ and new/) and an mbox file
  rebound ingest --db postgres://rebound@localhost/rebound dir/
  rebound ingest --envelope-from \"$SENDER\" - < message.eml     Postfix pipe(8): one message, exit 0/65/75")]
pub struct IngestArgs {
    /// Database and config.
    #[command(flatten)]
    pub db: DbOptions,
    /// Envelope sender to record with every message (pipe(8): ${sender}).
    #[arg(long, value_name = "ADDR")]
    pub envelope_from: Option<String>,
    /// Envelope recipient to record with every message, repeatable (pipe(8): ${recipient}).
    #[arg(long, value_name = "ADDR")]
    pub envelope_to: Vec<String>,
    /// Files, directories (recursive), Maildirs, mbox files; '-' alone reads one message on stdin.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// Store the messages; exit 0, 65 (some input bad) or 75 (database failure).
pub async fn run(args: IngestArgs) -> Result<i32, Failure> {
    let from_stdin = args.paths.iter().any(|p| p.as_os_str() == "-");
    if from_stdin && args.paths.len() > 1 {
        return Err(Failure::usage(anyhow!("'-' (stdin) must be the only PATH")));
    }
    let config = args.db.resolve()?;
    let url = &config.database.url;
    let store = Store::open(url)
        .await
        .map_err(|e| Failure::temporary(anyhow!("cannot open database {}: {e}", redact_url(url))))?;
    // Nothing is stored without its classification: a broken model (the database's active version, else the
    // shipped one) is a temporary failure (pipe(8) retries).
    crate::classify::lifecycle::install_active(&store, &config.classify).await.map_err(Failure::temporary)?;
    let (writer, writer_task) = Writer::spawn(store, config.ingest.max_batch, config.ingest.commit_delay);
    let limit = config.ingest.lmtp.max_message_size;
    // pipe(8) passes an empty ${sender} for the null sender of a bounce.
    let envelope_from = args.envelope_from.filter(|a| !a.is_empty());
    let envelope_to: Vec<String> = args.envelope_to.into_iter().filter(|a| !a.is_empty()).collect();
    let result = if from_stdin {
        one_from_stdin(&writer, limit, envelope_from, envelope_to).await
    } else {
        from_files(&writer, args.paths, limit, envelope_from, envelope_to).await
    };
    drop(writer);
    let _ = writer_task.await;
    result
}

async fn one_from_stdin(
    writer: &Writer,
    limit: usize,
    envelope_from: Option<String>,
    envelope_to: Vec<String>,
) -> Result<i32, Failure> {
    let read = tokio::task::spawn_blocking(move || stdin::read_message(std::io::stdin().lock(), limit))
        .await
        .map_err(Failure::temporary)?;
    let raw = match read {
        Ok(raw) => raw,
        Err(e @ StdinError::TooLarge { .. }) => return Err(Failure::data(e)),
        Err(e @ StdinError::Io(_)) => return Err(Failure::temporary(e)),
    };
    let message = crate::ingest::prepare(raw, "stdin".to_string(), envelope_from, envelope_to);
    match writer.save(message).await {
        Ok(SaveOutcome::Stored { message_id }) => println!("stored as message {message_id}"),
        Ok(SaveOutcome::Duplicate { message_id }) => println!("already stored as message {message_id}"),
        Err(e) => return Err(Failure::temporary(e)),
    }
    Ok(exit::OK)
}

async fn from_files(
    writer: &Writer,
    paths: Vec<PathBuf>,
    limit: usize,
    envelope_from: Option<String>,
    envelope_to: Vec<String>,
) -> Result<i32, Failure> {
    let envelope = (envelope_from.is_some() || !envelope_to.is_empty()).then_some((envelope_from, envelope_to));
    let outcome = import::import(paths, limit, envelope, writer).await;
    println!("{}", outcome.summary);
    if let Some(e) = outcome.store_error {
        return Err(Failure::temporary(anyhow!("import stopped: {e}")));
    }
    Ok(if outcome.bad_input { exit::DATAERR } else { exit::OK })
}
