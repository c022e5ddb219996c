//! `rebound classify [--format jsonl|table] PATH...`: parse and classify without a database, one line per
//! bounced recipient. A validator for what rebound makes of a message before it is ever stored.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use clap::{Args, ValueEnum};
use serde::Serialize;

use super::Failure;
use crate::lifecycle::{self, LifecycleError};
use crate::classify::{self, Classification, Explanation};
use crate::config::{ClassifyConfig, LmtpConfig};
use crate::exit;
use crate::ingest::files::{Messages, RawMessage, ReadError};
use crate::parse::{self, Parsed, Recipient};
use crate::store::{Store, redact_url};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per line and recipient.
    Jsonl,
    /// An aligned table for people.
    Table,
}

/// Arguments of `rebound classify`.
#[derive(Debug, Args)]
#[command(after_help = "\
JSON fields: file, kind (dsn|bounce|arf|autoreply|unparsed), recipient, action, status, reply_code, \
diagnostic, reason, hard_bounce, confidence, decided_by; `index` for messages of an mbox file and \
`parse_error` when there is one. A message without recipients gives one line with recipient null. With \
--text: one line with `diagnostic` the text, the reply code and status read from it, and the classification.
Exit 65 when a file cannot be read or is over the size limit (the others are still printed).

Examples:
  rebound classify bounce.eml
  rebound classify --format table ~/Maildir/new
  rebound classify --text '550 5.1.1 <a@b.example>: Recipient address rejected: User unknown'
  rebound classify --explain --text '452 4.2.2 Mailbox full'
  rebound classify corpus/ | jq -r .reason | sort | uniq -c")]
pub struct ClassifyArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    pub format: Format,
    /// Classify one diagnostic text instead of files, e.g. "550 5.1.1 <a@b.example>: user unknown".
    #[arg(long, value_name = "TEXT", conflicts_with = "paths")]
    pub text: Option<String>,
    /// With --text: also print what weighed most in the model's verdict (JSON).
    #[arg(long, requires = "text")]
    pub explain: bool,
    /// Model directory; without one there, reasons come from the status codes alone.
    #[arg(long, value_name = "DIR", default_value = "models")]
    pub model: PathBuf,
    /// Classify with the model version active in this database (`rebound model train --from-db`), else the
    /// --model directory. Without it no database is used.
    #[arg(long, value_name = "URL")]
    pub db: Option<String>,
    /// Threads that parse and classify (output keeps the input order); default: one per core.
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<NonZeroUsize>,
    /// Files, directories (recursive), Maildirs, mbox files.
    #[arg(required_unless_present = "text", value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// One output line: a recipient and its classification.
#[derive(Debug, Serialize)]
struct Row {
    file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    kind: Option<&'static str>,
    recipient: Option<String>,
    action: Option<String>,
    status: Option<String>,
    reply_code: Option<u16>,
    diagnostic: Option<String>,
    reason: Option<String>,
    hard_bounce: Option<bool>,
    confidence: Option<f32>,
    decided_by: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parse_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    explanation: Option<Explanation>,
}

/// Print the classification of every recipient of every message below the paths.
pub async fn run(args: ClassifyArgs) -> Result<i32, Failure> {
    let model = ClassifyConfig { model: args.model.clone(), ..ClassifyConfig::default() };
    match &args.db {
        Some(url) => {
            let store = Store::open(url)
                .await
                .map_err(|e| Failure::temporary(anyhow::anyhow!("cannot open database {}: {e}", redact_url(url))))?;
            lifecycle::install_active(&store, &model).await.map_err(|e| match e {
                LifecycleError::Store(e) => Failure::temporary(e),
                e => Failure::usage(e),
            })?;
            store.close().await;
        }
        None => {
            crate::ingest::install_model(&model).map_err(Failure::usage)?;
        }
    }
    let limit = LmtpConfig::default().max_message_size;
    let mut rows = Vec::new();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    if let Some(text) = &args.text {
        let row = text_row(text, args.explain);
        let written = match args.format {
            Format::Jsonl => write_json(&mut out, &row),
            Format::Table => write_table(&mut out, &[row]),
        };
        return match written.and_then(|()| out.flush()) {
            Ok(()) => Ok(exit::OK),
            Err(e) => finish_on_write_error(e),
        };
    }
    let jobs = args.jobs.or_else(|| std::thread::available_parallelism().ok()).map_or(1, NonZeroUsize::get);
    let messages = Messages::new(&args.paths, limit);
    let mut bad_input = false;
    let mut emit = |outcome: Outcome| -> io::Result<()> {
        match outcome {
            Outcome::Unreadable(e) => {
                eprintln!("rebound: {e}");
                bad_input = true;
                Ok(())
            }
            Outcome::Json(lines) => out.write_all(&lines),
            Outcome::Rows(message_rows) => {
                rows.extend(message_rows);
                Ok(())
            }
        }
    };
    let streamed = if jobs <= 1 {
        messages.map(|item| outcome(item, args.format)).try_for_each(&mut emit)
    } else {
        in_parallel(messages, jobs, args.format, &mut emit)
    };
    let written = streamed.and_then(|()| match args.format {
        Format::Jsonl => Ok(()),
        Format::Table => write_table(&mut out, &rows),
    });
    if let Err(e) = written.and_then(|()| out.flush()) {
        return finish_on_write_error(e);
    }
    Ok(if bad_input { exit::DATAERR } else { exit::OK })
}

/// What one input item gives: JSON lines ready to write, table rows to align at the end, or a read error.
enum Outcome {
    Json(Vec<u8>),
    Rows(Vec<Row>),
    Unreadable(ReadError),
}

/// Parse and classify one message read from the paths (or pass its read error on).
fn outcome(item: Result<RawMessage, ReadError>, format: Format) -> Outcome {
    let message = match item {
        Ok(m) => m,
        Err(e) => return Outcome::Unreadable(e),
    };
    let parsed = parse::parse(&message.bytes);
    let classifications = classify::classify_all(&parsed);
    let message_rows = rows_of(&message, &parsed, &classifications);
    match format {
        Format::Jsonl => {
            let mut lines = Vec::new();
            for row in &message_rows {
                // Writing into a Vec cannot fail, and a Row always serialises.
                let _ = write_json(&mut lines, row);
            }
            Outcome::Json(lines)
        }
        Format::Table => Outcome::Rows(message_rows),
    }
}

/// Parse and classify `messages` on `jobs` worker threads while this thread reads nothing but results and
/// passes them to `emit` in input order. A reader thread walks the paths; a bounded queue keeps it at most a
/// few messages ahead of the workers. When `emit` fails (stdout closed) the workers stop at their next
/// message and the reader at its next send.
fn in_parallel(
    messages: Messages,
    jobs: usize,
    format: Format,
    emit: &mut impl FnMut(Outcome) -> io::Result<()>,
) -> io::Result<()> {
    std::thread::scope(|scope| {
        let (work_tx, work_rx) = mpsc::sync_channel::<(usize, Result<RawMessage, ReadError>)>(4 * jobs);
        let work_rx = Arc::new(Mutex::new(work_rx));
        let (done_tx, done_rx) = mpsc::sync_channel::<(usize, Outcome)>(16 * jobs);
        scope.spawn(move || {
            for item in messages.enumerate() {
                if work_tx.send(item).is_err() {
                    break;
                }
            }
        });
        for _ in 0..jobs {
            let work_rx = Arc::clone(&work_rx);
            let done_tx = done_tx.clone();
            scope.spawn(move || {
                loop {
                    // The lock is held only to take the next message; a poisoned lock means a worker
                    // panicked, and the others go on.
                    let next = work_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok((seq, item)) = next else { break };
                    if done_tx.send((seq, outcome(item, format))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(work_rx);
        drop(done_tx);
        let mut next = 0usize;
        let mut early: BTreeMap<usize, Outcome> = BTreeMap::new();
        for (seq, result) in done_rx {
            early.insert(seq, result);
            while let Some(result) = early.remove(&next) {
                emit(result)?;
                next += 1;
            }
        }
        Ok(())
    })
}

/// A reader that went away (`| head`) is not an error.
fn finish_on_write_error(e: io::Error) -> Result<i32, Failure> {
    if e.kind() == io::ErrorKind::BrokenPipe { Ok(exit::OK) } else { Err(Failure::temporary(e)) }
}

fn write_json(out: &mut impl Write, row: &Row) -> io::Result<()> {
    serde_json::to_writer(&mut *out, row)?;
    out.write_all(b"\n")
}

/// The row of one bare diagnostic text.
fn text_row(text: &str, explain: bool) -> Row {
    let c = classify::classify_text(text);
    let signals = classify::recipient_of_text(text);
    Row {
        file: None,
        index: None,
        kind: None,
        recipient: None,
        action: None,
        status: signals.status,
        reply_code: signals.reply_code,
        diagnostic: Some(text.to_string()),
        reason: Some(c.reason.clone()),
        hard_bounce: Some(c.hard_bounce),
        confidence: Some(c.confidence),
        decided_by: Some(c.decided_by.as_str()),
        parse_error: None,
        explanation: if explain { classify::explain(text, None, 10) } else { None },
    }
}

fn rows_of(message: &RawMessage, parsed: &Parsed, classifications: &[Classification]) -> Vec<Row> {
    let row = |r: Option<&Recipient>, c: Option<&Classification>| Row {
        file: Some(message.path.display().to_string()),
        index: message.index,
        kind: Some(parsed.kind.as_str()),
        recipient: r.map(|r| r.recipient.clone()),
        action: r.and_then(|r| r.action.clone()),
        status: r.and_then(|r| r.status.clone()),
        reply_code: r.and_then(|r| r.reply_code),
        diagnostic: r.and_then(|r| r.diagnostic.clone()),
        reason: c.map(|c| c.reason.clone()),
        hard_bounce: c.map(|c| c.hard_bounce),
        confidence: c.map(|c| c.confidence),
        decided_by: c.map(|c| c.decided_by.as_str()),
        parse_error: parsed.parse_error.clone(),
        explanation: None,
    };
    if parsed.recipients.is_empty() {
        return vec![row(None, None)];
    }
    parsed.recipients.iter().enumerate().map(|(i, r)| row(Some(r), classifications.get(i))).collect()
}

fn write_table(out: &mut impl Write, rows: &[Row]) -> io::Result<()> {
    const DIAGNOSTIC_WIDTH: usize = 60;
    let header = ["FILE", "KIND", "RECIPIENT", "REASON", "HARD", "CONF", "STATUS", "CODE", "BY", "DIAGNOSTIC"];
    let cells: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            let file = match (&r.file, r.index) {
                (Some(f), Some(i)) => format!("{f}#{i}"),
                (Some(f), None) => f.clone(),
                (None, _) => "-".to_string(),
            };
            let diagnostic: String = r.diagnostic.as_deref().or(r.parse_error.as_deref()).unwrap_or("-").chars().take(DIAGNOSTIC_WIDTH).collect();
            [
                file,
                r.kind.unwrap_or("-").to_string(),
                r.recipient.clone().unwrap_or_else(|| "-".into()),
                r.reason.clone().unwrap_or_else(|| "-".into()),
                r.hard_bounce.map(|h| if h { "hard" } else { "soft" }).unwrap_or("-").to_string(),
                r.confidence.map(|c| format!("{c:.2}")).unwrap_or_else(|| "-".into()),
                r.status.clone().unwrap_or_else(|| "-".into()),
                r.reply_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                r.decided_by.unwrap_or("-").to_string(),
                diagnostic,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        s
    };
    writeln!(out, "{}", line(&header))?;
    for row in &cells {
        let refs: Vec<&str> = row.iter().map(String::as_str).collect();
        writeln!(out, "{}", line(&refs))?;
    }
    Ok(())
}
