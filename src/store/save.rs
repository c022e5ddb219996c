//! The write path of ingested messages: a batch of messages, their bounces (one row per recipient) and their
//! feedback reports, in one transaction, deduplicated by the SHA-256 of the raw bytes.
//!
//! One bad message never fails the others: if the database refuses the batch for a data reason, every message
//! gets its own transaction, and a message whose parsed data is still refused is stored raw only, as
//! `unparsed`, with the database's complaint in `parse_error`. Temporary failures (busy, disk full, read-only,
//! unreachable) fail the whole call and nothing of the batch is committed.

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
                let mut outcomes = Vec::with_capacity(rows.len());
                for row in rows {
                    outcomes.push(sqlite_write::write_message(&mut tx, row).await.map_err(err)?);
                }
                tx.commit().await.map_err(err)?;
                Ok(outcomes)
            }
            Pool::Postgres(pool) => {
                let err = |e: sqlx::Error| StoreError::sqlx(Backend::Postgres, context(), e);
                let mut tx = pool.begin().await.map_err(err)?;
                let mut outcomes = Vec::with_capacity(rows.len());
                for row in rows {
                    outcomes.push(postgres_write::write_message(&mut tx, row).await.map_err(err)?);
                }
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

const INSERT_MESSAGE: &str = "INSERT INTO messages (sha256, source, kind, size, envelope_from, envelope_to, \
     report_message_id, report_from, report_subject, report_date, parse_error, raw) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
     ON CONFLICT (sha256) DO NOTHING RETURNING id";
const SELECT_MESSAGE_ID: &str = "SELECT id FROM messages WHERE sha256 = $1";
const INSERT_BOUNCE: &str = "INSERT INTO bounces (message_id, position, recipient, recipient_domain, \
     original_recipient, action, status, reply_code, diagnostic_type, diagnostic, smtp_command, remote_mta, \
     reporting_mta, arrival_date, last_attempt_date, original_message_id, original_from, original_to, \
     original_subject, reason, hard_bounce, confidence, decided_by, bounced_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, \
     $22, $23, $24)";
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

/// The statements of one message, written once for both backends: `$db` is the sqlx database type, `$time`
/// converts a time to what that backend binds.
macro_rules! write_functions {
    ($db:ty, $time:path) => {
        use super::*;

        /// Insert one message and its children, or find the existing message with the same SHA-256.
        pub(super) async fn write_message(
            conn: &mut <$db as sqlx::Database>::Connection,
            m: &MessageRow<'_>,
        ) -> Result<SaveOutcome, sqlx::Error> {
            let inserted: Option<i64> = sqlx::query_scalar(INSERT_MESSAGE)
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
                .bind(m.raw)
                .fetch_optional(&mut *conn)
                .await?;
            let Some(message_id) = inserted else {
                let message_id: i64 =
                    sqlx::query_scalar(SELECT_MESSAGE_ID).bind(&m.sha256).fetch_one(&mut *conn).await?;
                return Ok(SaveOutcome::Duplicate { message_id });
            };
            for b in &m.bounces {
                sqlx::query(INSERT_BOUNCE)
                    .bind(message_id)
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
                    .bind($time(&b.bounced_at))
                    .execute(&mut *conn)
                    .await?;
            }
            if let Some(f) = &m.feedback {
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
            }
            Ok(SaveOutcome::Stored { message_id })
        }
    };
}

/// The write statements bound for SQLite.
mod sqlite_write {
    write_functions!(sqlx::Sqlite, sqlite_time);
}

/// The write statements bound for Postgres.
mod postgres_write {
    write_functions!(sqlx::Postgres, postgres_time);
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
    fn text_replaces_nul() {
        assert_eq!(text("a\0b"), "a\u{FFFD}b");
    }
}
