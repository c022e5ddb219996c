//! `rebound ingest PATH...`: read every message below the paths, store them through the writer, show a
//! progress bar on a terminal and count what happened.
//!
//! Reading and parsing run on a blocking thread while the writer commits the previous batch. A message
//! counts as stored only once its transaction has committed.

use std::collections::VecDeque;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;

use super::files::{Messages, ReadError};
use super::writer::{Pending, WriteError, Writer};
use crate::parse::Kind;
use crate::store::{NewMessage, SaveOutcome};

/// Messages handed to the writer and not yet confirmed, at most.
const IN_FLIGHT: usize = 1024;

/// What an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Messages read (including those that then failed to store).
    pub read: u64,
    /// Messages committed as new rows.
    pub stored: u64,
    /// Messages already in the database (same sha256), not stored again.
    pub duplicates: u64,
    /// Of the stored messages, those kept as `unparsed`.
    pub unparsed: u64,
    /// Files or messages that could not be read, were over the size limit, or could not be stored.
    pub failed: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "read {}, stored {}, duplicates {}, unparsed {}, failed {}",
            self.read, self.stored, self.duplicates, self.unparsed, self.failed
        )
    }
}

/// The end of an import.
#[derive(Debug)]
pub struct Outcome {
    /// The counts.
    pub summary: Summary,
    /// Some input could not be read or was over the size limit (exit 65).
    pub bad_input: bool,
    /// The database failed; the import stopped there (exit 75).
    pub store_error: Option<WriteError>,
}

enum Item {
    Message(Box<NewMessage>),
    Unreadable(ReadError),
}

/// Import every message below `paths` (each at most `limit` bytes) through `writer`, with `envelope`
/// (sender, recipients) if given, else the sender of an mbox `From ` line. Errors on single files are
/// printed and counted; a database error stops the import.
pub async fn import(
    paths: Vec<PathBuf>,
    limit: usize,
    envelope: Option<(Option<String>, Vec<String>)>,
    writer: &Writer,
) -> Outcome {
    let (tx, mut rx) = mpsc::channel::<Item>(256);
    let reader = tokio::task::spawn_blocking(move || {
        for item in Messages::new(&paths, limit) {
            let item = match item {
                Ok(raw) => {
                    let source = raw.source();
                    let (from, to) = envelope.clone().unwrap_or((raw.envelope_from, Vec::new()));
                    Item::Message(Box::new(super::prepare(raw.bytes, source, from, to)))
                }
                Err(e) => Item::Unreadable(e),
            };
            if tx.blocking_send(item).is_err() {
                return;
            }
        }
    });

    let bar = progress_bar();
    let mut summary = Summary::default();
    let mut bad_input = false;
    let mut store_error = None;
    let mut pending: VecDeque<(String, bool, Pending)> = VecDeque::new();
    while let Some(item) = rx.recv().await {
        match item {
            Item::Unreadable(e) => {
                bar.suspend(|| eprintln!("rebound: {e}"));
                summary.failed += 1;
                bad_input = true;
            }
            Item::Message(message) => {
                summary.read += 1;
                bar.inc(1);
                let source = message.source.clone();
                let unparsed = message.parsed.kind == Kind::Unparsed;
                match writer.submit(*message).await {
                    Ok(p) => pending.push_back((source, unparsed, p)),
                    Err(e) => {
                        summary.failed += 1;
                        store_error = Some(e);
                        break;
                    }
                }
                while pending.len() >= IN_FLIGHT {
                    if let Some((source, unparsed, p)) = pending.pop_front() {
                        record(&mut summary, &mut store_error, &bar, &source, unparsed, p.outcome().await);
                    }
                }
                if store_error.is_some() {
                    break;
                }
            }
        }
        bar.set_message(format!("stored {}, duplicates {}, failed {}", summary.stored, summary.duplicates, summary.failed));
    }
    // Stop the reader (if the import ended early) and wait for what is already with the writer.
    drop(rx);
    for (source, unparsed, p) in pending {
        record(&mut summary, &mut store_error, &bar, &source, unparsed, p.outcome().await);
    }
    if let Err(e) = reader.await {
        tracing::error!(error = %e, "the file reader failed");
        bad_input = true;
    }
    bar.finish_and_clear();
    Outcome { summary, bad_input, store_error }
}

fn record(
    summary: &mut Summary,
    store_error: &mut Option<WriteError>,
    bar: &ProgressBar,
    source: &str,
    unparsed: bool,
    outcome: Result<SaveOutcome, WriteError>,
) {
    match outcome {
        Ok(SaveOutcome::Stored { message_id }) => {
            tracing::debug!(%source, message_id, "stored");
            summary.stored += 1;
            summary.unparsed += u64::from(unparsed);
        }
        Ok(SaveOutcome::Duplicate { message_id }) => {
            tracing::debug!(%source, message_id, "duplicate");
            summary.duplicates += 1;
        }
        Err(e) => {
            summary.failed += 1;
            if store_error.is_none() {
                bar.suspend(|| eprintln!("rebound: {source}: {e}"));
                *store_error = Some(e);
            }
        }
    }
}

/// A spinner with counts on a terminal; hidden when stderr is not one.
fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    let style = ProgressStyle::with_template("{spinner} {elapsed} {human_pos} messages ({per_sec}) {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
