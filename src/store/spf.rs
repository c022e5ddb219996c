//! The SPF side of the store: `spf_checks` rows (one per identity checked), the report outbox
//! (`outgoing_reports`) written in the same transaction as the check that caused it, the database-held
//! limits (`rate_limits`: per report address and a global hourly cap; suppression of addresses whose
//! reports bounced, from `bounces`), and the sender's side: claiming due reports (`FOR UPDATE SKIP
//! LOCKED` on Postgres, so several processes can share one database) and recording every attempt in
//! `report_attempts`.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use super::{Backend, Pool, Store, StoreError};

/// One `spf_checks` row.
#[derive(Debug, Clone, PartialEq)]
pub struct SpfCheckRow {
    /// When the check ran.
    pub checked_at: DateTime<Utc>,
    /// The SMTP client.
    pub client_ip: String,
    /// Its reverse name as the MTA saw it, if any.
    pub client_name: Option<String>,
    /// HELO as sent.
    pub helo: Option<String>,
    /// MAIL FROM as sent.
    pub mail_from: Option<String>,
    /// The recipient of the request.
    pub rcpt_to: Option<String>,
    /// The MTA's queue id.
    pub queue_id: Option<String>,
    /// `helo` or `mail_from`.
    pub identity: &'static str,
    /// The domain checked.
    pub domain: String,
    /// The result word.
    pub result: &'static str,
    /// The explanation of a fail.
    pub explanation: Option<String>,
    /// The record that decided.
    pub record: Option<String>,
    /// The term that decided.
    pub mechanism: Option<String>,
    /// What the policy answered.
    pub action: Option<String>,
}

/// A report to queue with a check, if the limits allow.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportToQueue {
    /// Index, in the item's rows, of the check the report is about.
    pub row: usize,
    /// `kind` column (e.g. `spf-failure`).
    pub kind: &'static str,
    /// The reported domain.
    pub domain: String,
    /// The RFC 6652 address.
    pub address: String,
    /// The MAIL FROM of the failing message.
    pub mail_from: String,
    /// The complete signed message; empty when the writer found the address's limit reached before
    /// building it (the store then only counts the report as rate-limited).
    pub message: Vec<u8>,
    /// Reports per address per period.
    pub per_address: u32,
    /// That period.
    pub period: Duration,
    /// Reports per hour in all.
    pub max_per_hour: u32,
}

/// One check (its rows) and the reports planned for it (at most one per identity), written together.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckItem {
    /// The rows (one per identity).
    pub rows: Vec<SpfCheckRow>,
    /// The reports planned (HELO and MAIL FROM identities each may have one; RFC 6652 §2).
    pub reports: Vec<ReportToQueue>,
}

/// What happened to a planned report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// In the outbox under this id.
    Queued(i64),
    /// The address had a hard bounce: reports to it stop.
    Suppressed,
    /// The address had its share for the period.
    RateLimited,
    /// The global hourly cap is reached.
    HourlyCap,
}

/// A report claimed for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedReport {
    /// Outbox id.
    pub id: i64,
    /// Where to.
    pub address: String,
    /// The message.
    pub message: Vec<u8>,
    /// Attempts before this one.
    pub attempts: i64,
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Accepted by the relay.
    Sent,
    /// Failed, will be retried.
    Temporary,
    /// Failed for good.
    Permanent,
}

impl AttemptOutcome {
    fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Sent => "sent",
            AttemptOutcome::Temporary => "temporary",
            AttemptOutcome::Permanent => "permanent",
        }
    }
}

/// Start of the fixed window of `period` that holds `now`.
fn window_start(now: DateTime<Utc>, period: Duration) -> DateTime<Utc> {
    let p = period.as_secs().max(1) as i64;
    let t = now.timestamp().div_euclid(p) * p;
    Utc.timestamp_opt(t, 0).single().unwrap_or(now)
}

fn sqlite_time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn postgres_time(t: &DateTime<Utc>) -> DateTime<Utc> {
    *t
}

const INSERT_CHECK: &str = "INSERT INTO spf_checks (checked_at, client_ip, client_name, helo, mail_from, rcpt_to, \
     queue_id, identity, domain, result, explanation, record, mechanism, action) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING id";
const SUPPRESSED: &str = "SELECT COUNT(*) FROM bounces WHERE lower(recipient) = lower($1) AND hard_bounce";
const RATE_COUNT: &str = "SELECT count FROM rate_limits WHERE key = $1 AND window_start = $2";
const RATE_TAKE: &str = "INSERT INTO rate_limits (key, window_start, count) VALUES ($1, $2, 1) \
     ON CONFLICT (key, window_start) DO UPDATE SET count = rate_limits.count + 1 WHERE rate_limits.count < $3 \
     RETURNING count";
const CLAIM_ONCE: &str = "INSERT INTO rate_limits (key, window_start, count) VALUES ($1, $2, 1) \
     ON CONFLICT (key, window_start) DO NOTHING RETURNING count";
const RATE_GIVE_BACK: &str = "UPDATE rate_limits SET count = count - 1 WHERE key = $1 AND window_start = $2 AND count > 0";
/// Counts reports that were not queued, per reason and hour (key `suppressed:spf-report:REASON`), so the
/// digest can say how many were rate-limited without a row per refused report.
const COUNT_SUPPRESSED: &str = "INSERT INTO rate_limits (key, window_start, count) VALUES ($1, $2, $3) \
     ON CONFLICT (key, window_start) DO UPDATE SET count = rate_limits.count + $3";
const OUTBOX_DEPTH: &str = "SELECT COUNT(*) FROM outgoing_reports WHERE status IN ('queued', 'sending')";
const INSERT_REPORT: &str = "INSERT INTO outgoing_reports (created_at, check_id, kind, domain, report_address, \
     mail_from, message, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $1) RETURNING id";
const CLAIM_SQLITE: &str = "UPDATE outgoing_reports SET status = 'sending', claimed_by = $1, claimed_until = $2 \
     WHERE id IN (SELECT id FROM outgoing_reports \
       WHERE ((status = 'queued' AND next_attempt_at <= $3) OR (status = 'sending' AND claimed_until < $3)) \
         AND ($5 IS NULL OR kind = $5) \
       ORDER BY id LIMIT $4) \
     RETURNING id, report_address, message, attempts";
const CLAIM_POSTGRES: &str = "UPDATE outgoing_reports SET status = 'sending', claimed_by = $1, claimed_until = $2 \
     WHERE id IN (SELECT id FROM outgoing_reports \
       WHERE ((status = 'queued' AND next_attempt_at <= $3) OR (status = 'sending' AND claimed_until < $3)) \
         AND ($5 IS NULL OR kind = $5) \
       ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED) \
     RETURNING id, report_address, message, attempts";
const INSERT_ATTEMPT: &str = "INSERT INTO report_attempts (report_id, attempted_at, outcome, smtp_code, detail, \
     duration_ms) VALUES ($1, $2, $3, $4, $5, $6)";
const FINISH_SENT: &str = "UPDATE outgoing_reports SET status = 'sent', attempts = attempts + 1, sent_at = $2, \
     last_error = NULL, claimed_by = NULL, claimed_until = NULL WHERE id = $1";
const FINISH_RETRY: &str = "UPDATE outgoing_reports SET status = 'queued', attempts = attempts + 1, \
     next_attempt_at = $2, last_error = $3, claimed_by = NULL, claimed_until = NULL WHERE id = $1";
const FINISH_FAILED: &str = "UPDATE outgoing_reports SET status = 'failed', attempts = attempts + 1, \
     last_error = $2, claimed_by = NULL, claimed_until = NULL WHERE id = $1";

/// The statements, written once for both backends.
macro_rules! spf_functions {
    ($db:ty, $time:path, $claim:expr) => {
        use super::*;

        /// Writes the rows of every item, then decides the planned reports. Limits are taken in one
        /// lock order in every process (the report addresses sorted, the global counter last), so
        /// transactions sharing a Postgres never wait on each other in a cycle.
        pub(super) async fn write_batch(
            conn: &mut <$db as sqlx::Database>::Connection,
            items: &[CheckItem],
            now: DateTime<Utc>,
        ) -> Result<Vec<(Vec<i64>, Vec<Queued>)>, sqlx::Error> {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                let mut ids = Vec::with_capacity(item.rows.len());
                for r in &item.rows {
                    let id: i64 = sqlx::query_scalar(INSERT_CHECK)
                        .bind($time(&r.checked_at))
                        .bind(&r.client_ip)
                        .bind(&r.client_name)
                        .bind(&r.helo)
                        .bind(&r.mail_from)
                        .bind(&r.rcpt_to)
                        .bind(&r.queue_id)
                        .bind(r.identity)
                        .bind(&r.domain)
                        .bind(r.result)
                        .bind(&r.explanation)
                        .bind(&r.record)
                        .bind(&r.mechanism)
                        .bind(&r.action)
                        .fetch_one(&mut *conn)
                        .await?;
                    ids.push(id);
                }
                out.push((ids, vec![Queued::RateLimited; item.reports.len()]));
            }
            let mut order: Vec<(String, usize, usize)> = items
                .iter()
                .enumerate()
                .flat_map(|(i, item)| item.reports.iter().enumerate().map(move |(j, r)| (address_key(r), i, j)))
                .collect();
            order.sort();
            let hour = window_start(now, Duration::from_secs(3600));
            let mut took = Vec::with_capacity(order.len());
            for (key, i, j) in order {
                let report = &items[i].reports[j];
                // The writer found the address's share used up before building the message: rate-limited.
                if report.message.is_empty() {
                    continue;
                }
                let bounced: i64 = sqlx::query_scalar(SUPPRESSED).bind(&report.address).fetch_one(&mut *conn).await?;
                if bounced > 0 {
                    out[i].1[j] = Queued::Suppressed;
                    continue;
                }
                let global: Option<i64> = sqlx::query_scalar(RATE_COUNT)
                    .bind(GLOBAL_KEY)
                    .bind($time(&hour))
                    .fetch_optional(&mut *conn)
                    .await?;
                if global.unwrap_or(0) >= i64::from(report.max_per_hour) {
                    out[i].1[j] = Queued::HourlyCap;
                    continue;
                }
                if report.per_address == 0 {
                    continue;
                }
                let window = window_start(now, report.period);
                let taken: Option<i64> = sqlx::query_scalar(RATE_TAKE)
                    .bind(&key)
                    .bind($time(&window))
                    .bind(i64::from(report.per_address))
                    .fetch_optional(&mut *conn)
                    .await?;
                if taken.is_some() {
                    took.push((key, window, i, j));
                }
            }
            for (key, window, i, j) in took {
                let report = &items[i].reports[j];
                let taken: Option<i64> = sqlx::query_scalar(RATE_TAKE)
                    .bind(GLOBAL_KEY)
                    .bind($time(&hour))
                    .bind(i64::from(report.max_per_hour))
                    .fetch_optional(&mut *conn)
                    .await?;
                if taken.is_none() {
                    // The address keeps its share for a later failure.
                    sqlx::query(RATE_GIVE_BACK).bind(&key).bind($time(&window)).execute(&mut *conn).await?;
                    out[i].1[j] = Queued::HourlyCap;
                    continue;
                }
                let id: i64 = sqlx::query_scalar(INSERT_REPORT)
                    .bind($time(&now))
                    .bind(out[i].0.get(report.row).copied())
                    .bind(report.kind)
                    .bind(&report.domain)
                    .bind(&report.address)
                    .bind(&report.mail_from)
                    .bind(&report.message)
                    .fetch_one(&mut *conn)
                    .await?;
                out[i].1[j] = Queued::Queued(id);
            }
            let mut not_queued: HashMap<&str, i64> = HashMap::new();
            for queued in out.iter().flat_map(|(_, q)| q) {
                let why = match queued {
                    Queued::Queued(_) => continue,
                    Queued::Suppressed => "bounced",
                    Queued::RateLimited => "rate-limit",
                    Queued::HourlyCap => "hourly-cap",
                };
                *not_queued.entry(why).or_default() += 1;
            }
            for (why, n) in not_queued {
                sqlx::query(COUNT_SUPPRESSED)
                    .bind(format!("{SUPPRESSED_KEY}{why}"))
                    .bind($time(&hour))
                    .bind(n)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(out)
        }

        /// Reports sent to this address in the current window.
        pub(super) async fn used(
            conn: &mut <$db as sqlx::Database>::Connection,
            report: &ReportToQueue,
            now: DateTime<Utc>,
        ) -> Result<i64, sqlx::Error> {
            let window = window_start(now, report.period);
            let used: Option<i64> = sqlx::query_scalar(RATE_COUNT)
                .bind(address_key(report))
                .bind($time(&window))
                .fetch_optional(&mut *conn)
                .await?;
            Ok(used.unwrap_or(0))
        }

        pub(super) async fn once(
            conn: &mut <$db as sqlx::Database>::Connection,
            key: &str,
            at: DateTime<Utc>,
        ) -> Result<bool, sqlx::Error> {
            let won: Option<i64> =
                sqlx::query_scalar(CLAIM_ONCE).bind(format!("once:{key}")).bind($time(&at)).fetch_optional(&mut *conn).await?;
            Ok(won.is_some())
        }

        pub(super) async fn claim(
            conn: &mut <$db as sqlx::Database>::Connection,
            worker: &str,
            kind: Option<&str>,
            limit: i64,
            lease: Duration,
            now: DateTime<Utc>,
        ) -> Result<Vec<ClaimedReport>, sqlx::Error> {
            let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::minutes(5));
            let rows: Vec<(i64, String, Vec<u8>, i64)> = sqlx::query_as($claim)
                .bind(worker)
                .bind($time(&until))
                .bind($time(&now))
                .bind(limit)
                .bind(kind)
                .fetch_all(&mut *conn)
                .await?;
            Ok(rows
                .into_iter()
                .map(|(id, address, message, attempts)| ClaimedReport { id, address, message, attempts })
                .collect())
        }

        #[allow(clippy::too_many_arguments)] // one bound parameter each, inside a per-backend macro
        pub(super) async fn finish(
            conn: &mut <$db as sqlx::Database>::Connection,
            id: i64,
            outcome: AttemptOutcome,
            smtp_code: Option<i64>,
            detail: &str,
            duration_ms: i64,
            retry_at: Option<DateTime<Utc>>,
            now: DateTime<Utc>,
        ) -> Result<(), sqlx::Error> {
            sqlx::query(INSERT_ATTEMPT)
                .bind(id)
                .bind($time(&now))
                .bind(outcome.as_str())
                .bind(smtp_code)
                .bind(detail)
                .bind(duration_ms)
                .execute(&mut *conn)
                .await?;
            match (outcome, retry_at) {
                (AttemptOutcome::Sent, _) => {
                    sqlx::query(FINISH_SENT).bind(id).bind($time(&now)).execute(&mut *conn).await?;
                }
                (AttemptOutcome::Temporary, Some(at)) => {
                    sqlx::query(FINISH_RETRY).bind(id).bind($time(&at)).bind(detail).execute(&mut *conn).await?;
                }
                _ => {
                    sqlx::query(FINISH_FAILED).bind(id).bind(detail).execute(&mut *conn).await?;
                }
            }
            Ok(())
        }
    };
}

/// The global hourly counter's key.
const GLOBAL_KEY: &str = "spf-report:*";
/// Prefix of the keys counting reports not queued (`bounced`, `rate-limit`, `hourly-cap` follow).
pub const SUPPRESSED_KEY: &str = "suppressed:spf-report:";

/// The per-address counter's key.
fn address_key(report: &ReportToQueue) -> String {
    format!("spf-report:{}", report.address.to_ascii_lowercase())
}

mod sqlite_spf {
    spf_functions!(sqlx::Sqlite, sqlite_time, CLAIM_SQLITE);
}

mod postgres_spf {
    spf_functions!(sqlx::Postgres, postgres_time, CLAIM_POSTGRES);
}

impl Store {
    /// Writes checks, and the reports planned with them, in one transaction; returns, per item, the
    /// `spf_checks` ids and what became of its report.
    pub async fn save_spf_checks(&self, items: &[CheckItem]) -> Result<Vec<(Vec<i64>, Vec<Queued>)>, StoreError> {
        let now = Utc::now();
        let context = || format!("cannot save {} SPF check(s) in {}", items.len(), self.display_url);
        match &self.pool {
            Pool::Sqlite(pool) => {
                let err = |e: sqlx::Error| StoreError::sqlx(Backend::Sqlite, context(), e);
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
                let out = sqlite_spf::write_batch(&mut tx, items, now).await.map_err(err)?;
                tx.commit().await.map_err(err)?;
                Ok(out)
            }
            Pool::Postgres(pool) => {
                let err = |e: sqlx::Error| StoreError::sqlx(Backend::Postgres, context(), e);
                let mut tx = pool.begin().await.map_err(err)?;
                let out = postgres_spf::write_batch(&mut tx, items, now).await.map_err(err)?;
                tx.commit().await.map_err(err)?;
                Ok(out)
            }
        }
    }

    /// A cheap look before building and signing a report: how many reports this address had in the
    /// current window. (The decision that counts is taken inside [`Store::save_spf_checks`]'s
    /// transaction.)
    pub async fn reports_used(&self, report: &ReportToQueue) -> Result<i64, StoreError> {
        let now = Utc::now();
        let context = || format!("cannot read rate limits in {}", self.display_url);
        match &self.pool {
            Pool::Sqlite(pool) => {
                let err = |e: sqlx::Error| StoreError::sqlx(Backend::Sqlite, context(), e);
                let mut conn = pool.acquire().await.map_err(err)?;
                sqlite_spf::used(&mut conn, report, now).await.map_err(err)
            }
            Pool::Postgres(pool) => {
                let err = |e: sqlx::Error| StoreError::sqlx(Backend::Postgres, context(), e);
                let mut conn = pool.acquire().await.map_err(err)?;
                postgres_spf::used(&mut conn, report, now).await.map_err(err)
            }
        }
    }

    /// Claims the run of `key` (e.g. `digest`) due at `at`: true for the first caller, among every
    /// process sharing the database, false for all later ones. The token is a `rate_limits` row, so it
    /// lasts (and a run already made is not made again after a restart).
    pub async fn claim_once(&self, key: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let context = || format!("cannot claim the {key} run of {at} in {}", self.display_url);
        match &self.pool {
            Pool::Sqlite(pool) => {
                let mut conn = pool.acquire().await.map_err(|e| StoreError::sqlx(Backend::Sqlite, context(), e))?;
                sqlite_spf::once(&mut conn, key, at).await.map_err(|e| StoreError::sqlx(Backend::Sqlite, context(), e))
            }
            Pool::Postgres(pool) => {
                let mut conn = pool.acquire().await.map_err(|e| StoreError::sqlx(Backend::Postgres, context(), e))?;
                postgres_spf::once(&mut conn, key, at).await.map_err(|e| StoreError::sqlx(Backend::Postgres, context(), e))
            }
        }
    }

    /// Outbox entries waiting for delivery (`queued` or `sending`), for the queue-depth gauge.
    pub async fn outbox_depth(&self) -> Result<i64, StoreError> {
        let context = || format!("cannot count the outbox in {}", self.display_url);
        match &self.pool {
            Pool::Sqlite(pool) => sqlx::query_scalar(OUTBOX_DEPTH)
                .fetch_one(pool)
                .await
                .map_err(|e| StoreError::sqlx(Backend::Sqlite, context(), e)),
            Pool::Postgres(pool) => sqlx::query_scalar(OUTBOX_DEPTH)
                .fetch_one(pool)
                .await
                .map_err(|e| StoreError::sqlx(Backend::Postgres, context(), e)),
        }
    }

    /// Claims up to `limit` due reports for `worker` for `lease` (a report whose lease ran out, because
    /// its sender died, is due again): of every kind, or only of `kind` (`digest`, `spf-failure`, ...).
    pub async fn claim_reports(
        &self,
        worker: &str,
        kind: Option<&str>,
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<ClaimedReport>, StoreError> {
        let now = Utc::now();
        let context = || format!("cannot claim reports in {}", self.display_url);
        match &self.pool {
            Pool::Sqlite(pool) => {
                let err = |e: sqlx::Error| StoreError::sqlx(Backend::Sqlite, context(), e);
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
                let claimed = sqlite_spf::claim(&mut tx, worker, kind, limit, lease, now).await.map_err(err)?;
                tx.commit().await.map_err(err)?;
                Ok(claimed)
            }
            Pool::Postgres(pool) => {
                let err = |e: sqlx::Error| StoreError::sqlx(Backend::Postgres, context(), e);
                let mut tx = pool.begin().await.map_err(err)?;
                let claimed = postgres_spf::claim(&mut tx, worker, kind, limit, lease, now).await.map_err(err)?;
                tx.commit().await.map_err(err)?;
                Ok(claimed)
            }
        }
    }

    /// Records one delivery attempt and its consequence: sent, queued again at `retry_at`, or failed
    /// (a temporary failure without `retry_at` is final).
    pub async fn record_report_attempt(
        &self,
        id: i64,
        outcome: AttemptOutcome,
        smtp_code: Option<i64>,
        detail: &str,
        duration_ms: i64,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let now = Utc::now();
        let context = || format!("cannot record the delivery attempt of report {id} in {}", self.display_url);
        match &self.pool {
            Pool::Sqlite(pool) => {
                let err = |e: sqlx::Error| StoreError::sqlx(Backend::Sqlite, context(), e);
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
                sqlite_spf::finish(&mut tx, id, outcome, smtp_code, detail, duration_ms, retry_at, now).await.map_err(err)?;
                tx.commit().await.map_err(err)
            }
            Pool::Postgres(pool) => {
                let err = |e: sqlx::Error| StoreError::sqlx(Backend::Postgres, context(), e);
                let mut tx = pool.begin().await.map_err(err)?;
                postgres_spf::finish(&mut tx, id, outcome, smtp_code, detail, duration_ms, retry_at, now)
                    .await
                    .map_err(err)?;
                tx.commit().await.map_err(err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_aligned() {
        let t = Utc.with_ymd_and_hms(2026, 12, 1, 13, 47, 12).unwrap();
        assert_eq!(window_start(t, Duration::from_secs(3600)), Utc.with_ymd_and_hms(2026, 12, 1, 13, 0, 0).unwrap());
        assert_eq!(window_start(t, Duration::from_secs(86_400)), Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap());
    }
}
