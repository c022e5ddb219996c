//! The write path of ingested messages: a batch of messages, their bounces (one row per recipient) and their
//! feedback reports, in one transaction, deduplicated by the SHA-256 of the raw bytes.
//!
//! One bad message never fails the others: if the database refuses the batch for a data reason, every message
//! gets its own transaction, and a message whose parsed data is still refused is stored raw only, as
//! `unparsed`, with the database's complaint in `parse_error`. Temporary failures (busy, disk full, read-only,
//! unreachable) fail the whole call and nothing of the batch is committed.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, TimeZone, Utc};

use super::{Backend, Pool, Store, StoreError, StoreErrorKind};
use crate::classify::Classification;
use crate::parse::{FeedbackReport, Kind, Parsed, Recipient};

/// One message to store: its raw bytes and what parse and classify made of it.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The message exactly as received.
    pub raw: Vec<u8>,
    /// SHA-256 of `raw`, the deduplication key (stored as lowercase hex).
    pub sha256: [u8; 32],
    /// Where it came from: `lmtp`, `file:PATH` or `stdin`.
    pub source: String,
    /// What the parser made of it.
    pub parsed: Parsed,
    /// One classification per `parsed.recipients`, same order.
    pub classifications: Vec<Classification>,
    /// SMTP/LMTP envelope sender, if known.
    pub envelope_from: Option<String>,
    /// SMTP/LMTP envelope recipients (stored joined with `, `).
    pub envelope_to: Vec<String>,
}

/// What happened to one message of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SaveOutcome {
    /// Stored now, as `messages.id`.
    Stored {
        /// The new row's id.
        message_id: i64,
    },
    /// The same bytes were stored before (or earlier in this batch), as `messages.id`.
    Duplicate {
        /// The existing row's id.
        message_id: i64,
    },
}

impl SaveOutcome {
    /// The `messages.id` of the message, new or existing.
    pub fn message_id(self) -> i64 {
        match self {
            SaveOutcome::Stored { message_id } | SaveOutcome::Duplicate { message_id } => message_id,
        }
    }
}

impl Store {
    /// Store a batch in one transaction; returns one outcome per input, same order.
    ///
    /// Acknowledge a message only after this returns `Ok`: then it is committed. On `Err` nothing of the
    /// batch is committed (or, after a data error split the batch, what was committed is recognised as
    /// [`SaveOutcome::Duplicate`] when the batch is retried).
    pub async fn save_messages(&self, batch: &[NewMessage]) -> Result<Vec<SaveOutcome>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let now = Utc::now();
        let rows: Vec<MessageRow<'_>> = batch.iter().map(|m| MessageRow::prepare(m, now)).collect();
        let all: Vec<&MessageRow<'_>> = rows.iter().collect();
        match self.write_transaction(&all).await {
            Err(e) if e.kind() == StoreErrorKind::Data => {
                tracing::warn!(error = %e, messages = rows.len(), "batch refused for a data error; one transaction per message");
                let mut outcomes = Vec::with_capacity(rows.len());
                for row in &rows {
                    match self.write_transaction(&[row]).await {
                        Ok(outcome) => outcomes.extend(outcome),
                        Err(e) if e.kind() == StoreErrorKind::Data => {
                            tracing::warn!(error = %e, sha256 = %row.sha256, "message stored raw only");
                            let degraded = row.degraded(format!("stored raw only, the database refused its parsed data: {e}"));
                            outcomes.extend(self.write_transaction(&[&degraded]).await?);
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(outcomes)
            }
            other => other,
        }
    }

    /// Write `rows` in one transaction (SQLite: `BEGIN IMMEDIATE`, so the write lock is taken up front and a
    /// reader never has to be upgraded into a writer mid-transaction).
    async fn write_transaction(&self, rows: &[&MessageRow<'_>]) -> Result<Vec<SaveOutcome>, StoreError> {
        let context = || {
            let what = if rows.len() == 1 { "1 message".to_string() } else { format!("{} messages", rows.len()) };
            format!("cannot save {what} in {}", self.display_url)
        };
        match &self.pool {
            Pool::Sqlite(pool) => {
                let err = |e: sqlx::Error| StoreError::sqlx(Backend::Sqlite, context(), e);
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
                let outcomes = sqlite_write::write_messages(&mut tx, rows).await.map_err(err)?;
                tx.commit().await.map_err(err)?;
                Ok(outcomes)
            }
            Pool::Postgres(pool) => {
                let err = |e: sqlx::Error| StoreError::sqlx(Backend::Postgres, context(), e);
                let mut tx = pool.begin().await.map_err(err)?;
                let outcomes = postgres_write::write_messages(&mut tx, rows).await.map_err(err)?;
                tx.commit().await.map_err(err)?;
                Ok(outcomes)
            }
        }
    }
}

/// A `messages` row and its children, with every value converted to what the database stores.
struct MessageRow<'a> {
    sha256: String,
    source: String,
    kind: &'static str,
    size: i64,
    envelope_from: Option<String>,
    envelope_to: Option<String>,
    report_message_id: Option<String>,
    report_from: Option<String>,
    report_subject: Option<String>,
    report_date: Option<String>,
    parse_error: Option<String>,
    raw: &'a [u8],
    bounces: Vec<BounceRow>,
    feedback: Option<FeedbackRow>,
}

/// A `bounces` row.
struct BounceRow {
    position: i64,
    recipient: String,
    recipient_domain: Option<String>,
    original_recipient: Option<String>,
    action: Option<String>,
    status: Option<String>,
    reply_code: Option<i64>,
    diagnostic_type: Option<String>,
    diagnostic: Option<String>,
    smtp_command: Option<String>,
    remote_mta: Option<String>,
    reporting_mta: Option<String>,
    arrival_date: Option<String>,
    last_attempt_date: Option<String>,
    original_message_id: Option<String>,
    original_from: Option<String>,
    original_to: Option<String>,
    original_subject: Option<String>,
    reason: String,
    hard_bounce: bool,
    confidence: f64,
    decided_by: &'static str,
    bounced_at: DateTime<Utc>,
}

/// A `feedback_reports` row with its `feedback_lists` and `feedback_fields` rows.
struct FeedbackRow {
    feedback_type: String,
    version: Option<String>,
    user_agent: Option<String>,
    auth_failure: Option<String>,
    source_ip: Option<String>,
    source_port: Option<i64>,
    reported_domain: Option<String>,
    original_mail_from: Option<String>,
    original_envelope_id: Option<String>,
    arrival_date: Option<String>,
    reporting_mta: Option<String>,
    delivery_result: Option<String>,
    identity_alignment: Option<String>,
    incidents: Option<i64>,
    dkim_domain: Option<String>,
    dkim_identity: Option<String>,
    dkim_selector: Option<String>,
    dkim_canonicalized_header: Option<String>,
    dkim_canonicalized_body: Option<String>,
    dkim_selector_dns: Option<String>,
    has_original: bool,
    /// (list name, position, value).
    lists: Vec<(&'static str, i64, String)>,
    /// (position, name, value).
    fields: Vec<(i64, String, String)>,
}

impl<'a> MessageRow<'a> {
    fn prepare(m: &'a NewMessage, now: DateTime<Utc>) -> MessageRow<'a> {
        let p = &m.parsed;
        let mut row = MessageRow {
            sha256: hex::encode(m.sha256),
            source: text(&m.source),
            kind: p.kind.as_str(),
            size: i64::try_from(m.raw.len()).unwrap_or(i64::MAX),
            envelope_from: opt(&m.envelope_from),
            envelope_to: (!m.envelope_to.is_empty()).then(|| text(&m.envelope_to.join(", "))),
            report_message_id: opt(&p.message_id),
            report_from: opt(&p.from),
            report_subject: opt(&p.subject),
            report_date: opt(&p.date),
            parse_error: opt(&p.parse_error),
            raw: &m.raw,
            bounces: Vec::new(),
            feedback: None,
        };
        if m.classifications.len() != p.recipients.len() {
            return row.degraded(format!(
                "stored raw only: {} recipients but {} classifications",
                p.recipients.len(),
                m.classifications.len()
            ));
        }
        let report_date = p.date.as_deref().and_then(|d| parse_date(d, now));
        row.bounces = p
            .recipients
            .iter()
            .zip(&m.classifications)
            .enumerate()
            .map(|(i, (r, c))| BounceRow::new(i, r, c, p, report_date.unwrap_or(now), now))
            .collect();
        row.feedback = p.feedback.as_ref().map(FeedbackRow::new);
        row
    }

    /// The same message with nothing but its raw bytes and envelope, marked `unparsed` with `why`.
    fn degraded(&self, why: String) -> MessageRow<'a> {
        MessageRow {
            sha256: self.sha256.clone(),
            source: self.source.clone(),
            kind: Kind::Unparsed.as_str(),
            size: self.size,
            envelope_from: self.envelope_from.clone(),
            envelope_to: self.envelope_to.clone(),
            report_message_id: None,
            report_from: None,
            report_subject: None,
            report_date: None,
            parse_error: Some(match &self.parse_error {
                Some(earlier) => format!("{why}; parser: {earlier}"),
                None => why,
            }),
            raw: self.raw,
            bounces: Vec::new(),
            feedback: None,
        }
    }
}

impl BounceRow {
    fn new(
        position: usize,
        r: &Recipient,
        c: &Classification,
        p: &Parsed,
        fallback_time: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> BounceRow {
        let original = p.original.as_ref();
        let bounced_at = [&r.last_attempt_date, &r.arrival_date]
            .into_iter()
            .find_map(|d| d.as_deref().and_then(|d| parse_date(d, now)))
            .unwrap_or(fallback_time);
        BounceRow {
            position: i64::try_from(position).unwrap_or(i64::MAX),
            recipient: text(&r.recipient),
            recipient_domain: domain_of(&r.recipient),
            original_recipient: opt(&r.original_recipient),
            action: opt(&r.action),
            status: opt(&r.status),
            reply_code: r.reply_code.map(i64::from),
            diagnostic_type: opt(&r.diagnostic_type),
            diagnostic: opt(&r.diagnostic),
            smtp_command: opt(&r.smtp_command),
            remote_mta: opt(&r.remote_mta),
            reporting_mta: opt(&r.reporting_mta),
            arrival_date: opt(&r.arrival_date),
            last_attempt_date: opt(&r.last_attempt_date),
            original_message_id: original.and_then(|o| opt(&o.message_id)),
            original_from: original.and_then(|o| opt(&o.from)),
            original_to: original.and_then(|o| opt(&o.to)),
            original_subject: original.and_then(|o| opt(&o.subject)),
            reason: text(&c.reason),
            hard_bounce: c.hard_bounce,
            confidence: f64::from(c.confidence),
            decided_by: c.decided_by.as_str(),
            bounced_at,
        }
    }
}

impl FeedbackRow {
    fn new(f: &FeedbackReport) -> FeedbackRow {
        let mut lists = Vec::new();
        for (name, values) in [
            ("reported_domain", &f.reported_domains),
            ("reported_uri", &f.reported_uris),
            ("original_rcpt_to", &f.original_rcpt_to),
            ("authentication_results", &f.authentication_results),
            ("spf_dns", &f.spf_dns),
        ] {
            lists.extend(values.iter().enumerate().map(|(i, v)| (name, i as i64, text(v))));
        }
        FeedbackRow {
            feedback_type: text(&f.feedback_type),
            version: opt(&f.version),
            user_agent: opt(&f.user_agent),
            auth_failure: opt(&f.auth_failure),
            source_ip: opt(&f.source_ip),
            source_port: f.source_port.map(i64::from),
            reported_domain: f.reported_domains.first().map(|d| text(d)),
            original_mail_from: opt(&f.original_mail_from),
            original_envelope_id: opt(&f.original_envelope_id),
            arrival_date: opt(&f.arrival_date),
            reporting_mta: opt(&f.reporting_mta),
            delivery_result: opt(&f.delivery_result),
            identity_alignment: opt(&f.identity_alignment),
            incidents: f.incidents.map(i64::from),
            dkim_domain: opt(&f.dkim_domain),
            dkim_identity: opt(&f.dkim_identity),
            dkim_selector: opt(&f.dkim_selector),
            dkim_canonicalized_header: opt(&f.dkim_canonicalized_header),
            dkim_canonicalized_body: opt(&f.dkim_canonicalized_body),
            dkim_selector_dns: opt(&f.dkim_selector_dns),
            has_original: f.has_original,
            lists,
            fields: f.fields.iter().enumerate().map(|(i, (n, v))| (i as i64, text(n), text(v))).collect(),
        }
    }
}

/// Text as stored: NUL characters (which Postgres refuses in text) become U+FFFD on both backends.
fn text(s: &str) -> String {
    if s.contains('\0') { s.replace('\0', "\u{FFFD}") } else { s.to_string() }
}

/// [`text`] of an optional value.
fn opt(s: &Option<String>) -> Option<String> {
    s.as_deref().map(text)
}

/// The lowercase domain of an address (after the last `@`), for grouping; `None` without one.
fn domain_of(address: &str) -> Option<String> {
    let (_, domain) = address.rsplit_once('@')?;
    let domain = domain.trim().trim_end_matches('>').trim_end_matches('.');
    (!domain.is_empty()).then(|| text(&domain.to_ascii_lowercase()))
}

/// An RFC 5322 date (DSN Arrival-Date / Last-Attempt-Date, the report's Date), if it parses and is
/// plausible: not before 1990, not more than a day ahead of `now`.
fn parse_date(value: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let parsed = mail_parser::DateTime::parse_rfc822(value.trim()).filter(|d| d.is_valid())?;
    let time = Utc.timestamp_opt(parsed.to_timestamp(), 0).single()?;
    let earliest = Utc.with_ymd_and_hms(1990, 1, 1, 0, 0, 0).single()?;
    (time >= earliest && time <= now + chrono::Duration::days(1)).then_some(time)
}

/// SQLite stores times as `YYYY-MM-DD HH:MM:SS` text in UTC, the format of `datetime('now')`.
fn sqlite_time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Postgres stores times as `timestamptz`.
fn postgres_time(t: &DateTime<Utc>) -> DateTime<Utc> {
    *t
}

/// Rows per multi-row `INSERT`: keeps every statement far below the bind-parameter limits (SQLite 32766,
/// Postgres 65535) while a whole batch still takes a handful of statements.
const ROWS_PER_STATEMENT: usize = 256;

const MESSAGE_COLUMNS: &str = "sha256, source, kind, size, envelope_from, envelope_to, report_message_id, \
     report_from, report_subject, report_date, parse_error, raw";
const BOUNCE_COLUMNS: &str = "message_id, position, recipient, recipient_domain, original_recipient, action, \
     status, reply_code, diagnostic_type, diagnostic, smtp_command, remote_mta, reporting_mta, arrival_date, \
     last_attempt_date, original_message_id, original_from, original_to, original_subject, reason, hard_bounce, \
     confidence, decided_by, bounced_at";
const INSERT_FEEDBACK: &str = "INSERT INTO feedback_reports (message_id, feedback_type, version, user_agent, \
     auth_failure, source_ip, source_port, reported_domain, original_mail_from, original_envelope_id, \
     arrival_date, reporting_mta, delivery_result, identity_alignment, incidents, dkim_domain, dkim_identity, \
     dkim_selector, dkim_canonicalized_header, dkim_canonicalized_body, dkim_selector_dns, has_original) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, \
     $22) RETURNING id";
const INSERT_FEEDBACK_LIST: &str =
    "INSERT INTO feedback_lists (report_id, list, position, value) VALUES ($1, $2, $3, $4)";
const INSERT_FEEDBACK_FIELD: &str =
    "INSERT INTO feedback_fields (report_id, position, name, value) VALUES ($1, $2, $3, $4)";

/// How a backend writes bind parameters in generated multi-row statements.
#[derive(Clone, Copy)]
enum Placeholder {
    /// `?`: SQLite numbers them in order. (SQLite also accepts `$N`, but looks each name up in a list, which
    /// makes a statement with thousands of `$N` parameters quadratic: 5x slower at 64 messages per batch.)
    Question,
    /// `$1`, `$2`, ...: Postgres.
    Dollar,
}

/// `(p1, p2), (p3, p4)` for `rows` tuples of `columns` placeholders.
fn placeholders(style: Placeholder, rows: usize, columns: usize) -> String {
    let mut out = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        if row > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for column in 0..columns {
            if column > 0 {
                out.push_str(", ");
            }
            match style {
                Placeholder::Question => out.push('?'),
                Placeholder::Dollar => {
                    out.push('$');
                    out.push_str(&(row * columns + column + 1).to_string());
                }
            }
        }
        out.push(')');
    }
    out
}

/// `INSERT INTO messages ... ON CONFLICT (sha256) DO NOTHING RETURNING id, sha256` for `rows` messages.
fn insert_messages_sql(style: Placeholder, rows: usize) -> String {
    format!(
        "INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES {} ON CONFLICT (sha256) DO NOTHING RETURNING id, sha256",
        placeholders(style, rows, 12)
    )
}

/// `SELECT id, sha256 FROM messages WHERE sha256 IN (...)` for `n` hashes.
fn select_messages_sql(style: Placeholder, n: usize) -> String {
    let list = placeholders(style, 1, n);
    format!("SELECT id, sha256 FROM messages WHERE sha256 IN {list}")
}

/// `INSERT INTO bounces ...` for `rows` bounces.
fn insert_bounces_sql(style: Placeholder, rows: usize) -> String {
    format!("INSERT INTO bounces ({BOUNCE_COLUMNS}) VALUES {}", placeholders(style, rows, 24))
}

/// Which rows of a batch are new and which existed, from the `RETURNING` of the insert (`inserted`) and a
/// lookup of the rest (`existing`); a hash that occurs twice in the batch is stored once and then a duplicate.
fn outcomes(
    rows: &[&MessageRow<'_>],
    inserted: &HashMap<String, i64>,
    existing: &HashMap<String, i64>,
) -> Result<Vec<SaveOutcome>, sqlx::Error> {
    let mut claimed = HashSet::new();
    rows.iter()
        .map(|m| match (inserted.get(&m.sha256), existing.get(&m.sha256)) {
            (Some(&message_id), _) if claimed.insert(message_id) => Ok(SaveOutcome::Stored { message_id }),
            (Some(&message_id), _) | (None, Some(&message_id)) => Ok(SaveOutcome::Duplicate { message_id }),
            // Neither inserted nor found: only possible if the row was deleted meanwhile.
            (None, None) => Err(sqlx::Error::RowNotFound),
        })
        .collect()
}

/// The statements of a batch, written once for both backends: `$db` is the sqlx database type, `$time`
/// converts a time to what that backend binds, `$style` is its [`Placeholder`] style.
macro_rules! write_functions {
    ($db:ty, $time:path, $style:expr) => {
        use super::*;

        /// Insert the messages of a batch and the children of those that are new; find the existing ids of
        /// the others. A handful of multi-row statements per batch, whatever its size.
        pub(super) async fn write_messages(
            conn: &mut <$db as sqlx::Database>::Connection,
            rows: &[&MessageRow<'_>],
        ) -> Result<Vec<SaveOutcome>, sqlx::Error> {
            // Insert in hash order, so concurrent writers (Postgres) take the unique-index locks in the same
            // order and cannot deadlock on each other.
            let mut sorted: Vec<&MessageRow<'_>> = rows.to_vec();
            sorted.sort_by(|a, b| a.sha256.cmp(&b.sha256));
            let mut inserted = HashMap::new();
            for chunk in sorted.chunks(ROWS_PER_STATEMENT) {
                let sql = insert_messages_sql($style, chunk.len());
                let mut query = sqlx::query_as::<_, (i64, String)>(&sql);
                for m in chunk {
                    query = query
                        .bind(&m.sha256)
                        .bind(&m.source)
                        .bind(m.kind)
                        .bind(m.size)
                        .bind(&m.envelope_from)
                        .bind(&m.envelope_to)
                        .bind(&m.report_message_id)
                        .bind(&m.report_from)
                        .bind(&m.report_subject)
                        .bind(&m.report_date)
                        .bind(&m.parse_error)
                        .bind(m.raw);
                }
                for (id, sha256) in query.fetch_all(&mut *conn).await? {
                    inserted.insert(sha256, id);
                }
            }

            let mut missing: Vec<&str> =
                sorted.iter().map(|m| m.sha256.as_str()).filter(|s| !inserted.contains_key(*s)).collect();
            missing.dedup();
            let mut existing = HashMap::new();
            for chunk in missing.chunks(ROWS_PER_STATEMENT) {
                let sql = select_messages_sql($style, chunk.len());
                let mut query = sqlx::query_as::<_, (i64, String)>(&sql);
                for sha256 in chunk {
                    query = query.bind(*sha256);
                }
                for (id, sha256) in query.fetch_all(&mut *conn).await? {
                    existing.insert(sha256, id);
                }
            }

            let outcomes = outcomes(rows, &inserted, &existing)?;
            let new: Vec<(i64, &MessageRow<'_>)> = outcomes
                .iter()
                .zip(rows)
                .filter_map(|(o, m)| match o {
                    SaveOutcome::Stored { message_id } => Some((*message_id, *m)),
                    SaveOutcome::Duplicate { .. } => None,
                })
                .collect();

            let bounces: Vec<(i64, &BounceRow)> =
                new.iter().flat_map(|(id, m)| m.bounces.iter().map(move |b| (*id, b))).collect();
            for chunk in bounces.chunks(ROWS_PER_STATEMENT) {
                let sql = insert_bounces_sql($style, chunk.len());
                let mut query = sqlx::query(&sql);
                for (message_id, b) in chunk {
                    query = query
                        .bind(*message_id)
                        .bind(b.position)
                        .bind(&b.recipient)
                        .bind(&b.recipient_domain)
                        .bind(&b.original_recipient)
                        .bind(&b.action)
                        .bind(&b.status)
                        .bind(b.reply_code)
                        .bind(&b.diagnostic_type)
                        .bind(&b.diagnostic)
                        .bind(&b.smtp_command)
                        .bind(&b.remote_mta)
                        .bind(&b.reporting_mta)
                        .bind(&b.arrival_date)
                        .bind(&b.last_attempt_date)
                        .bind(&b.original_message_id)
                        .bind(&b.original_from)
                        .bind(&b.original_to)
                        .bind(&b.original_subject)
                        .bind(&b.reason)
                        .bind(b.hard_bounce)
                        .bind(b.confidence)
                        .bind(b.decided_by)
                        .bind($time(&b.bounced_at));
                }
                query.execute(&mut *conn).await?;
            }

            for (message_id, f) in new.iter().filter_map(|(id, m)| m.feedback.as_ref().map(|f| (*id, f))) {
                write_feedback(conn, message_id, f).await?;
            }
            Ok(outcomes)
        }

        /// Insert one feedback report with its lists and fields (reports are rare: one statement per row).
        async fn write_feedback(
            conn: &mut <$db as sqlx::Database>::Connection,
            message_id: i64,
            f: &FeedbackRow,
        ) -> Result<(), sqlx::Error> {
            let report_id: i64 = sqlx::query_scalar(INSERT_FEEDBACK)
                .bind(message_id)
                .bind(&f.feedback_type)
                .bind(&f.version)
                .bind(&f.user_agent)
                .bind(&f.auth_failure)
                .bind(&f.source_ip)
                .bind(f.source_port)
                .bind(&f.reported_domain)
                .bind(&f.original_mail_from)
                .bind(&f.original_envelope_id)
                .bind(&f.arrival_date)
                .bind(&f.reporting_mta)
                .bind(&f.delivery_result)
                .bind(&f.identity_alignment)
                .bind(f.incidents)
                .bind(&f.dkim_domain)
                .bind(&f.dkim_identity)
                .bind(&f.dkim_selector)
                .bind(&f.dkim_canonicalized_header)
                .bind(&f.dkim_canonicalized_body)
                .bind(&f.dkim_selector_dns)
                .bind(f.has_original)
                .fetch_one(&mut *conn)
                .await?;
            for (list, position, value) in &f.lists {
                sqlx::query(INSERT_FEEDBACK_LIST)
                    .bind(report_id)
                    .bind(*list)
                    .bind(*position)
                    .bind(value)
                    .execute(&mut *conn)
                    .await?;
            }
            for (position, name, value) in &f.fields {
                sqlx::query(INSERT_FEEDBACK_FIELD)
                    .bind(report_id)
                    .bind(*position)
                    .bind(name)
                    .bind(value)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(())
        }
    };
}

/// The write statements bound for SQLite.
mod sqlite_write {
    write_functions!(sqlx::Sqlite, sqlite_time, Placeholder::Question);
}

/// The write statements bound for Postgres.
mod postgres_write {
    write_functions!(sqlx::Postgres, postgres_time, Placeholder::Dollar);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_of_takes_the_last_at_and_lowercases() {
        assert_eq!(domain_of("User@Example.COM").as_deref(), Some("example.com"));
        assert_eq!(domain_of("\"a@b\"@host.example.").as_deref(), Some("host.example"));
        assert_eq!(domain_of("postmaster"), None);
        assert_eq!(domain_of("x@"), None);
    }

    #[test]
    fn parse_date_accepts_rfc5322_and_refuses_the_implausible() {
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap();
        let t = parse_date("Tue, 1 Dec 2026 10:00:00 +0100 (CET)", now).unwrap();
        assert_eq!(sqlite_time(&t), "2026-12-01 09:00:00");
        assert_eq!(parse_date("Fri, 1 Jan 2100 00:00:00 +0000", now), None);
        assert_eq!(parse_date("yesterday", now), None);
    }

    #[test]
    fn placeholders_number_every_column_of_every_row() {
        assert_eq!(placeholders(Placeholder::Dollar, 2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(placeholders(Placeholder::Question, 2, 2), "(?, ?), (?, ?)");
        assert_eq!(placeholders(Placeholder::Dollar, 1, 1), "($1)");
    }

    #[test]
    fn text_replaces_nul() {
        assert_eq!(text("a\0b"), "a\u{FFFD}b");
    }
}
