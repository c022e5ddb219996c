//! Mailed digests: one multipart/alternative message (the text digest, then the HTML one) per recipient,
//! DKIM-signed with the keys of [`crate::report::dkim`] like the SPF failure reports, written to the same
//! outbox (`outgoing_reports`, `kind = 'digest'`) and delivered by the same [`crate::report::sender`], with
//! its retries and recorded attempts, through the `[smtp]` relay.
//!
//! A scheduled digest is queued under the key `digest:PERIOD-END:RECIPIENT` (unique in the outbox), so
//! when several `serve` processes share a Postgres database each period reaches each recipient once.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::Address as SmtpAddress;
use mail_builder::MessageBuilder;
use mail_builder::headers::HeaderType;
use mail_builder::headers::address::Address;
use mail_builder::headers::text::Text;

use super::{Digest, DigestConfig, DigestError};
use crate::config::Config;
use crate::report::dkim::{DkimKey, DkimKeyConfig};
use crate::spf::headers::printable;
use crate::store::Store;
use crate::store::spf::ClaimedReport;

/// The outbox `kind` of a mailed digest.
pub const KIND: &str = "digest";

const INSERT: &str = "INSERT INTO outgoing_reports (created_at, kind, domain, report_address, message, next_attempt_at, \
     dedup_key) VALUES ($1, 'digest', $2, $3, $4, $1, $5) ON CONFLICT (dedup_key) DO NOTHING RETURNING id";
const CLAIM: &str = "UPDATE outgoing_reports SET status = 'sending', claimed_by = $2, claimed_until = $3 \
     WHERE id = $1 AND status = 'queued' RETURNING id, report_address, message, attempts";

/// Builds, signs and queues mailed digests under one `[digest]` configuration.
#[derive(Debug)]
pub struct Mailer {
    from_name: String,
    from: String,
    keys: Vec<DkimKey>,
}

impl Mailer {
    /// The mailer of `config`: its `from` and the DKIM keys it names in `sign` (or, when `sign` is empty,
    /// those of `[report.spf] sign`), loaded from `dkim` now so a bad key is an error before anything runs.
    pub fn from_config(
        config: &DigestConfig,
        dkim: &BTreeMap<String, DkimKeyConfig>,
        report_sign: &[String],
    ) -> Result<Mailer, DigestError> {
        config.validate_mail()?;
        let names = if config.sign.is_empty() { report_sign } else { &config.sign };
        let mut keys = Vec::with_capacity(names.len());
        for name in names {
            let key = dkim.get(name).ok_or_else(|| {
                DigestError::Config(format!("[digest] signs with DKIM key {name:?}, but there is no [dkim.{name}] section"))
            })?;
            keys.push(DkimKey::load(key)?);
        }
        Ok(Mailer { from_name: config.from_name.clone(), from: config.from.clone(), keys })
    }

    /// The From address (also the envelope sender when no SPF report sender runs).
    pub fn from_address(&self) -> &str {
        &self.from
    }

    /// The signed message for `to`: text and HTML as the two parts of a multipart/alternative body.
    pub fn message(&self, digest: &Digest, text: &str, html: &str, to: &str) -> Result<Vec<u8>, DigestError> {
        let subject = format!(
            "rebound digest {} to {} UTC: {} failures ({}), {} hard",
            digest.from, digest.until, digest.failures.current, digest.failures.change, digest.hard.current
        );
        let domain = self.from.rsplit_once('@').map_or("localhost", |(_, d)| d);
        let id = format!("digest.{}.{}@{}", Utc::now().timestamp_micros(), rand::random::<u64>(), printable(domain));
        let mut message = MessageBuilder::new()
            .from(Address::new_address(Some(printable(&self.from_name)).filter(|n| !n.is_empty()), printable(&self.from)))
            .to(Address::new_address(None::<String>, printable(to)))
            .subject(Text::new(subject))
            .message_id(id)
            .header("Auto-Submitted", HeaderType::Text("auto-generated".into()))
            .text_body(text)
            .html_body(html)
            .write_to_vec()
            .map_err(|source| DigestError::Write { path: "(digest message)".into(), source })?;
        for key in &self.keys {
            message = key.sign(&message)?;
        }
        Ok(message)
    }

    /// Renders `digest` once and queues a signed message to each of `to`. With `dedup`, the entries are
    /// keyed `digest:DEDUP:RECIPIENT` and a recipient that already has one is skipped. Returns the new
    /// outbox ids (in the order of `to`, skipped ones left out).
    pub async fn queue(
        &self,
        store: &Store,
        digest: &Digest,
        to: &[String],
        dedup: Option<&str>,
    ) -> Result<Vec<i64>, DigestError> {
        let text = super::render::text(digest)?;
        let html = super::render::html(digest)?;
        let mut ids = Vec::with_capacity(to.len());
        for rcpt in to {
            let message = self.message(digest, &text, &html, rcpt)?;
            let key = dedup.map(|d| format!("digest:{d}:{}", rcpt.to_ascii_lowercase()));
            if let Some(id) = insert(store, rcpt, &message, key.as_deref()).await? {
                crate::metrics::report(crate::metrics::ReportEvent::Queued);
                ids.push(id);
            }
        }
        Ok(ids)
    }
}

/// Writes one outbox entry; `None` when `dedup_key` is already there.
async fn insert(store: &Store, to: &str, message: &[u8], dedup_key: Option<&str>) -> Result<Option<i64>, DigestError> {
    let now = Utc::now();
    let domain = to.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
    let result = if let Some(pool) = store.sqlite_pool() {
        sqlx::query_scalar(INSERT)
            .bind(now.format("%Y-%m-%d %H:%M:%S").to_string())
            .bind(domain)
            .bind(to)
            .bind(message)
            .bind(dedup_key)
            .fetch_optional(pool)
            .await
    } else if let Some(pool) = store.postgres_pool() {
        sqlx::query_scalar(INSERT).bind(now).bind(domain).bind(to).bind(message).bind(dedup_key).fetch_optional(pool).await
    } else {
        Ok(None)
    };
    result.map_err(|source| DigestError::Query { what: "the outbox (queueing a digest)", db: store.display_url().to_string(), source })
}

/// Claims the queued outbox entry `id` for `worker` for `lease`, so it can be delivered now (by
/// [`crate::report::sender::Sender::deliver`]); `None` when it is not queued (sent, or taken by a sender).
pub async fn claim(store: &Store, id: i64, worker: &str, lease: Duration) -> Result<Option<ClaimedReport>, DigestError> {
    let until: DateTime<Utc> = Utc::now() + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::minutes(5));
    let row: Result<Option<(i64, String, Vec<u8>, i64)>, sqlx::Error> = if let Some(pool) = store.sqlite_pool() {
        sqlx::query_as(CLAIM).bind(id).bind(worker).bind(until.format("%Y-%m-%d %H:%M:%S").to_string()).fetch_optional(pool).await
    } else if let Some(pool) = store.postgres_pool() {
        sqlx::query_as(CLAIM).bind(id).bind(worker).bind(until).fetch_optional(pool).await
    } else {
        Ok(None)
    };
    let row = row.map_err(|source| DigestError::Query { what: "the outbox (claiming a digest)", db: store.display_url().to_string(), source })?;
    Ok(row.map(|(id, address, message, attempts)| ClaimedReport { id, address, message, attempts }))
}

/// Whether `serve` runs the SPF report sender (`[spf]` present, `[report.spf] enabled`): it delivers
/// mailed digests too. Otherwise `serve` runs a sender of its own for them.
pub fn report_sender_runs(config: &Config) -> bool {
    config.spf.is_some() && config.report.spf.enabled
}

/// The envelope sender of delivered digests, the same as `serve`'s sender uses: `[report.spf]
/// from_address` when the report sender runs, else the digest's From.
pub fn envelope_sender<'a>(config: &'a Config, mailer: &'a Mailer) -> &'a str {
    if report_sender_runs(config) { &config.report.spf.from_address } else { mailer.from_address() }
}

/// Whether `s` is an address the relay will take (`user@domain`).
pub fn valid_address(s: &str) -> bool {
    s.parse::<SmtpAddress>().is_ok()
}
