//! The digest's queries. Each runs unchanged on SQLite and Postgres: times are bound as text on SQLite
//! (where they are stored `YYYY-MM-DD HH:MM:SS`) and as `timestamptz` on Postgres, and the few expressions
//! that differ (time as text, time buckets) come from [`Dialect`]. Every query is bounded by the period (and
//! the indexes on `bounced_at`, `checked_at`, `received_at`), so a digest stays fast on a large database.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::FromRow;

use super::{
    Bucket, Digest, DigestError, GroupRow, IncomingSection, Listing, Named, Period, QueueRow, ReasonRow,
    ReportedDomainRow, ReporterRow, SeriesPoint, SpfFailureRow, SpfResultRow, SpfSection, SuppressRow, Trend,
};
use crate::store::{Backend, Store};

/// Reasons that are recorded but are not failures.
pub const NOT_FAILURES: &[&str] = &["delivered", "vacation", "feedback"];
/// SQL condition "is a failure" on `bounces`.
const IS_FAILURE: &str = "reason NOT IN ('delivered', 'vacation', 'feedback')";
/// SPF results that count as failures.
const SPF_FAILURE: &str = "result IN ('fail', 'softfail', 'permerror')";
/// Rows shown in the top-N tables.
const TOP: usize = 10;
/// Rows shown of the suppression list and of the labelling queue.
const LIST: i64 = 50;
/// Characters kept of a diagnostic.
const DIAGNOSTIC_CHARS: usize = 140;

/// A bound parameter.
#[derive(Debug, Clone, Copy)]
enum Param {
    Time(DateTime<Utc>),
    Int(i64),
}

/// The SQL that differs between the backends.
#[derive(Debug, Clone, Copy)]
struct Dialect(Backend);

impl Dialect {
    /// A time column as `YYYY-MM-DD HH:MM:SS` text.
    fn text(self, column: &str) -> String {
        match self.0 {
            Backend::Sqlite => column.to_string(),
            Backend::Postgres => format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')"),
        }
    }

    /// A time column's bucket label (see [`Bucket::label`]).
    fn bucket(self, column: &str, bucket: Bucket) -> String {
        match (self.0, bucket) {
            (Backend::Sqlite, Bucket::Hour) => format!("substr({column}, 1, 13)"),
            (Backend::Sqlite, Bucket::Day) => format!("substr({column}, 1, 10)"),
            (Backend::Sqlite, Bucket::Month) => format!("substr({column}, 1, 7)"),
            (Backend::Postgres, Bucket::Hour) => format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24')"),
            (Backend::Postgres, Bucket::Day) => format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"),
            (Backend::Postgres, Bucket::Month) => format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM')"),
        }
    }
}

/// One digest's reads: the store, the dialect and the period's bounds.
struct Reader<'a> {
    store: &'a Store,
    dialect: Dialect,
    period: Period,
}

impl Reader<'_> {
    /// Run `sql` with `params` bound to `$1`, `$2`, ... and decode every row as `T`.
    async fn rows<T>(&self, what: &'static str, sql: &str, params: &[Param]) -> Result<Vec<T>, DigestError>
    where
        T: Send + Unpin + for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow>,
    {
        let result = if let Some(pool) = self.store.sqlite_pool() {
            let mut query = sqlx::query_as::<_, T>(sql);
            for p in params {
                query = match *p {
                    Param::Time(t) => query.bind(t.format("%Y-%m-%d %H:%M:%S").to_string()),
                    Param::Int(i) => query.bind(i),
                };
            }
            query.fetch_all(pool).await
        } else if let Some(pool) = self.store.postgres_pool() {
            let mut query = sqlx::query_as::<_, T>(sql);
            for p in params {
                query = match *p {
                    Param::Time(t) => query.bind(t),
                    Param::Int(i) => query.bind(i),
                };
            }
            query.fetch_all(pool).await
        } else {
            Ok(Vec::new())
        };
        result.map_err(|source| DigestError::Query { what, db: self.store.display_url().to_string(), source })
    }

    /// `$1` = start of the previous period, `$2` = start of the period, `$3` = its end.
    fn both_periods(&self) -> [Param; 3] {
        [Param::Time(self.period.previous_from()), Param::Time(self.period.from), Param::Time(self.period.until)]
    }

    /// `$1` = start of the period, `$2` = its end.
    fn this_period(&self) -> [Param; 2] {
        [Param::Time(self.period.from), Param::Time(self.period.until)]
    }
}

/// Read everything a digest of `period` shows. An empty database or period gives an empty digest, not an
/// error.
pub async fn collect(store: &Store, period: Period) -> Result<Digest, DigestError> {
    let r = Reader { store, dialect: Dialect(store.backend()), period };

    let database_empty = r
        .rows::<(i64,)>("whether the database is empty", "SELECT COUNT(*) FROM (SELECT 1 FROM messages LIMIT 1) AS any_message", &[])
        .await?
        .first()
        .is_none_or(|(n,)| *n == 0)
        && r.rows::<(i64,)>("whether the database is empty", "SELECT COUNT(*) FROM (SELECT 1 FROM spf_checks LIMIT 1) AS any_check", &[])
            .await?
            .first()
            .is_none_or(|(n,)| *n == 0);

    let messages = messages(&r).await?;
    let messages_total = Trend::new(
        messages.iter().map(|(_, t)| t.current).sum(),
        messages.iter().map(|(_, t)| t.previous).sum(),
    );
    let (reasons, other_events, failures, hard) = reasons(&r).await?;
    let soft = Trend::new(failures.current - hard.current, failures.previous - hard.previous);
    let failed_recipients = r
        .rows::<(i64,)>(
            "failed recipients",
            &format!("SELECT COUNT(DISTINCT recipient) FROM bounces WHERE bounced_at >= $1 AND bounced_at < $2 AND {IS_FAILURE}"),
            &r.this_period(),
        )
        .await?
        .first()
        .map_or(0, |(n,)| *n);
    let series = series(&r).await?;
    let domains = groups(&r, "recipient_domain", "recipient domains").await?;
    let mtas = groups(&r, "remote_mta", "remote MTAs").await?;
    let new_reasons = new_reasons(&r, &reasons, &other_events).await?;
    let new_domains = new_values(&r, "recipient_domain", "new recipient domains").await?;
    let new_mtas = new_values(&r, "remote_mta", "new remote MTAs").await?;
    let suppression = suppression(&r).await?;
    let spf = spf(&r).await?;
    let incoming = incoming(&r).await?;
    let labelling = labelling(&r).await?;

    let period_empty = messages_total.current == 0
        && failures.current == 0
        && other_events.is_empty()
        && spf.checks.current == 0
        && incoming.total.current == 0
        && spf.outbox.is_empty();

    Ok(Digest {
        period: period.describe(),
        from: period.from.format("%Y-%m-%d %H:%M").to_string(),
        until: period.until.format("%Y-%m-%d %H:%M").to_string(),
        since: period.since.to_string(),
        bucket: period.bucket(),
        database: store.display_url().to_string(),
        database_empty,
        period_empty,
        messages,
        messages_total,
        failures,
        hard,
        soft,
        failed_recipients,
        other_events,
        reasons,
        series,
        domains,
        mtas,
        new_reasons,
        new_domains,
        new_mtas,
        suppression,
        spf,
        incoming,
        labelling,
    })
}

/// Messages received by kind, in the period and the one before.
async fn messages(r: &Reader<'_>) -> Result<Vec<(String, Trend)>, DigestError> {
    let rows: Vec<(String, i64, i64)> = r
        .rows(
            "messages by kind",
            "SELECT kind, \
                    SUM(CASE WHEN received_at >= $2 THEN 1 ELSE 0 END), \
                    SUM(CASE WHEN received_at < $2 THEN 1 ELSE 0 END) \
             FROM messages WHERE received_at >= $1 AND received_at < $3 \
             GROUP BY kind ORDER BY kind",
            &r.both_periods(),
        )
        .await?;
    Ok(rows.into_iter().map(|(kind, cur, prev)| (kind, Trend::new(cur, prev))).collect())
}

/// Failures by reason (with trend and share), the non-failure events, total failures and hard bounces.
async fn reasons(r: &Reader<'_>) -> Result<(Vec<ReasonRow>, Vec<Named>, Trend, Trend), DigestError> {
    let rows: Vec<(String, i64, i64, i64, i64)> = r
        .rows(
            "bounces by reason",
            "SELECT reason, \
                    SUM(CASE WHEN bounced_at >= $2 THEN 1 ELSE 0 END), \
                    SUM(CASE WHEN bounced_at < $2 THEN 1 ELSE 0 END), \
                    SUM(CASE WHEN bounced_at >= $2 AND hard_bounce THEN 1 ELSE 0 END), \
                    SUM(CASE WHEN bounced_at < $2 AND hard_bounce THEN 1 ELSE 0 END) \
             FROM bounces WHERE bounced_at >= $1 AND bounced_at < $3 \
             GROUP BY reason",
            &r.both_periods(),
        )
        .await?;
    let mut other = Vec::new();
    let mut failures = Vec::new();
    let (mut cur, mut prev, mut hard_cur, mut hard_prev) = (0, 0, 0, 0);
    for (reason, c, p, hc, hp) in rows {
        if NOT_FAILURES.contains(&reason.as_str()) {
            if c > 0 {
                other.push(Named { name: reason, count: c });
            }
            continue;
        }
        cur += c;
        prev += p;
        hard_cur += hc;
        hard_prev += hp;
        failures.push((reason, c, p, hc));
    }
    let mut rows: Vec<ReasonRow> = failures
        .into_iter()
        .map(|(reason, c, p, hc)| ReasonRow {
            reason,
            trend: Trend::new(c, p),
            hard: hc,
            share: if cur > 0 { format!("{:.1}%", c as f64 * 100.0 / cur as f64) } else { "-".to_string() },
        })
        .collect();
    rows.sort_by(|a, b| {
        (b.trend.current, b.trend.previous).cmp(&(a.trend.current, a.trend.previous)).then(a.reason.cmp(&b.reason))
    });
    other.sort_by(|a, b| b.count.cmp(&a.count).then(a.name.cmp(&b.name)));
    Ok((rows, other, Trend::new(cur, prev), Trend::new(hard_cur, hard_prev)))
}

/// Hard and soft failures per bucket, with a zero for every empty bucket.
async fn series(r: &Reader<'_>) -> Result<Vec<SeriesPoint>, DigestError> {
    let bucket = r.period.bucket();
    let rows: Vec<(String, i64, i64)> = r
        .rows(
            "failures over time",
            &format!(
                "SELECT {b}, SUM(CASE WHEN hard_bounce THEN 1 ELSE 0 END), SUM(CASE WHEN hard_bounce THEN 0 ELSE 1 END) \
                 FROM bounces WHERE bounced_at >= $1 AND bounced_at < $2 AND {IS_FAILURE} GROUP BY {b}",
                b = r.dialect.bucket("bounced_at", bucket)
            ),
            &r.this_period(),
        )
        .await?;
    let counts: HashMap<String, (i64, i64)> = rows.into_iter().map(|(b, h, s)| (b, (h, s))).collect();
    Ok(bucket
        .labels(r.period.from, r.period.until)
        .into_iter()
        .map(|label| {
            let (hard, soft) = counts.get(&label).copied().unwrap_or((0, 0));
            SeriesPoint { bucket: label, hard, soft }
        })
        .collect())
}

/// The top values of `column` (recipient domain, remote MTA) by failures, with their dominant reason.
async fn groups(r: &Reader<'_>, column: &str, what: &'static str) -> Result<Vec<GroupRow>, DigestError> {
    let rows: Vec<(String, String, i64, i64)> = r
        .rows(
            what,
            &format!(
                "SELECT {column}, reason, COUNT(*), SUM(CASE WHEN hard_bounce THEN 1 ELSE 0 END) \
                 FROM bounces WHERE bounced_at >= $1 AND bounced_at < $2 AND {IS_FAILURE} AND {column} IS NOT NULL \
                 GROUP BY {column}, reason"
            ),
            &r.this_period(),
        )
        .await?;
    let mut by_name: BTreeMap<String, GroupRow> = BTreeMap::new();
    for (name, reason, n, hard) in rows {
        let row = by_name.entry(name.clone()).or_insert_with(|| GroupRow {
            name,
            failures: 0,
            hard: 0,
            dominant_reason: String::new(),
            dominant_count: 0,
        });
        row.failures += n;
        row.hard += hard;
        if n > row.dominant_count || (n == row.dominant_count && reason < row.dominant_reason) {
            row.dominant_reason = reason;
            row.dominant_count = n;
        }
    }
    let mut rows: Vec<GroupRow> = by_name.into_values().collect();
    rows.sort_by(|a, b| b.failures.cmp(&a.failures).then(a.name.cmp(&b.name)));
    rows.truncate(TOP);
    Ok(rows)
}

/// Reasons of the period (failures and other events) never recorded before it.
async fn new_reasons(r: &Reader<'_>, reasons: &[ReasonRow], other: &[Named]) -> Result<Vec<Named>, DigestError> {
    let before: Vec<(String,)> = r
        .rows("reasons seen before", "SELECT DISTINCT reason FROM bounces WHERE bounced_at < $1", &[Param::Time(r.period.from)])
        .await?;
    let before: HashSet<String> = before.into_iter().map(|(reason,)| reason).collect();
    let mut new: Vec<Named> = reasons
        .iter()
        .filter(|row| row.trend.current > 0)
        .map(|row| Named { name: row.reason.clone(), count: row.trend.current })
        .chain(other.iter().cloned())
        .filter(|n| !before.contains(&n.name))
        .collect();
    new.sort_by(|a, b| b.count.cmp(&a.count).then(a.name.cmp(&b.name)));
    Ok(new)
}

/// Values of `column` seen in the period (any bounce) and never before it, most frequent first.
async fn new_values(r: &Reader<'_>, column: &str, what: &'static str) -> Result<Vec<Named>, DigestError> {
    let rows: Vec<(String, i64)> = r
        .rows(
            what,
            &format!(
                "SELECT p.v, p.n FROM ( \
                     SELECT {column} AS v, COUNT(*) AS n FROM bounces \
                     WHERE bounced_at >= $1 AND bounced_at < $2 AND {column} IS NOT NULL GROUP BY {column} \
                 ) AS p \
                 WHERE NOT EXISTS (SELECT 1 FROM bounces o WHERE o.{column} = p.v AND o.bounced_at < $1) \
                 ORDER BY p.n DESC, p.v LIMIT $3"
            ),
            &[Param::Time(r.period.from), Param::Time(r.period.until), Param::Int(TOP as i64)],
        )
        .await?;
    Ok(rows.into_iter().map(|(name, count)| Named { name, count }).collect())
}

/// Shorten a diagnostic for a table cell.
fn shorten(text: Option<String>) -> String {
    let text = text.unwrap_or_default();
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() <= DIAGNOSTIC_CHARS {
        text
    } else {
        let mut short: String = text.chars().take(DIAGNOSTIC_CHARS - 1).collect();
        short.push('…');
        short
    }
}

/// Addresses that hard-bounced in the period and whose latest event (of all time) is that hard bounce:
/// the period's part of the `suppression_list` view, newest first.
async fn suppression(r: &Reader<'_>) -> Result<Listing<SuppressRow>, DigestError> {
    let latest_hard = "FROM bounces b WHERE b.hard_bounce AND b.bounced_at >= $1 AND b.bounced_at < $2 \
         AND NOT EXISTS (SELECT 1 FROM bounces l WHERE l.recipient = b.recipient \
                         AND (l.bounced_at > b.bounced_at OR (l.bounced_at = b.bounced_at AND l.id > b.id)))";
    let total = r
        .rows::<(i64,)>("the suppression list", &format!("SELECT COUNT(*) {latest_hard}"), &r.this_period())
        .await?
        .first()
        .map_or(0, |(n,)| *n);
    let rows: Vec<(String, String, Option<String>, String, Option<String>)> = r
        .rows(
            "the suppression list",
            &format!(
                "SELECT b.recipient, b.reason, b.status, {t}, b.diagnostic {latest_hard} \
                 ORDER BY b.bounced_at DESC, b.id DESC LIMIT $3",
                t = r.dialect.text("b.bounced_at")
            ),
            &[Param::Time(r.period.from), Param::Time(r.period.until), Param::Int(LIST)],
        )
        .await?;
    let rows = rows
        .into_iter()
        .map(|(recipient, reason, status, bounced_at, diagnostic)| SuppressRow {
            recipient,
            reason,
            status: status.unwrap_or_default(),
            bounced_at,
            diagnostic: shorten(diagnostic),
        })
        .collect();
    Ok(Listing { total, rows })
}

/// The SPF section: checks, results, failing sources (top and new), the outbox.
async fn spf(r: &Reader<'_>) -> Result<SpfSection, DigestError> {
    let counts: Vec<(i64, i64, i64, i64)> = r
        .rows(
            "SPF checks",
            &format!(
                "SELECT SUM(CASE WHEN checked_at >= $2 THEN 1 ELSE 0 END), SUM(CASE WHEN checked_at < $2 THEN 1 ELSE 0 END), \
                        SUM(CASE WHEN checked_at >= $2 AND {SPF_FAILURE} THEN 1 ELSE 0 END), \
                        SUM(CASE WHEN checked_at < $2 AND {SPF_FAILURE} THEN 1 ELSE 0 END) \
                 FROM spf_checks WHERE checked_at >= $1 AND checked_at < $3 HAVING COUNT(*) > 0"
            ),
            &r.both_periods(),
        )
        .await?;
    let (checks, failures) = counts
        .first()
        .map_or((Trend::new(0, 0), Trend::new(0, 0)), |&(c, p, fc, fp)| (Trend::new(c, p), Trend::new(fc, fp)));

    let results: Vec<(String, i64, i64)> = r
        .rows(
            "SPF results",
            "SELECT result, SUM(CASE WHEN identity = 'mail_from' THEN 1 ELSE 0 END), \
                    SUM(CASE WHEN identity = 'helo' THEN 1 ELSE 0 END) \
             FROM spf_checks WHERE checked_at >= $1 AND checked_at < $2 GROUP BY result",
            &r.this_period(),
        )
        .await?;
    let order = ["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"];
    let mut results: Vec<SpfResultRow> =
        results.into_iter().map(|(result, mail_from, helo)| SpfResultRow { result, mail_from, helo }).collect();
    results.sort_by_key(|row| order.iter().position(|o| *o == row.result).unwrap_or(order.len()));

    // The worst result per source: permerror > fail > softfail (by the MAX of a rank).
    let sources = |extra: &str| {
        format!(
            "SELECT domain, client_ip, \
                    CASE MAX(CASE result WHEN 'permerror' THEN 3 WHEN 'fail' THEN 2 ELSE 1 END) \
                         WHEN 3 THEN 'permerror' WHEN 2 THEN 'fail' ELSE 'softfail' END, \
                    COUNT(*), MIN({t}), MAX({t}) \
             FROM spf_checks s WHERE checked_at >= $1 AND checked_at < $2 AND {SPF_FAILURE} {extra} \
             GROUP BY domain, client_ip ORDER BY COUNT(*) DESC, domain, client_ip LIMIT $3",
            t = r.dialect.text("checked_at")
        )
    };
    let params = [Param::Time(r.period.from), Param::Time(r.period.until), Param::Int(TOP as i64)];
    let to_rows = |rows: Vec<(String, String, String, i64, String, String)>| {
        rows.into_iter()
            .map(|(domain, client_ip, result, failures, first_seen, last_seen)| SpfFailureRow {
                domain,
                client_ip,
                result,
                failures,
                first_seen,
                last_seen,
            })
            .collect::<Vec<_>>()
    };
    let by_source = to_rows(r.rows("SPF failures by source", &sources(""), &params).await?);
    let new_sources = to_rows(
        r.rows(
            "new SPF failure sources",
            &sources(&format!(
                "AND NOT EXISTS (SELECT 1 FROM spf_checks o WHERE o.domain = s.domain AND o.client_ip = s.client_ip \
                 AND o.{SPF_FAILURE} AND o.checked_at < $1)"
            )),
            &params,
        )
        .await?,
    );

    let outbox: Vec<(String, i64)> = r
        .rows(
            "outgoing reports",
            "SELECT status, COUNT(*) FROM outgoing_reports WHERE created_at >= $1 AND created_at < $2 GROUP BY status",
            &r.this_period(),
        )
        .await?;
    let order = ["sent", "queued", "sending", "failed", "suppressed"];
    let mut outbox: Vec<Named> = outbox.into_iter().map(|(name, count)| Named { name, count }).collect();
    outbox.sort_by_key(|n| order.iter().position(|o| *o == n.name).unwrap_or(order.len()));
    let suppressed: Vec<(String, i64)> = r
        .rows(
            "suppressed reports",
            "SELECT COALESCE(last_error, '(no reason recorded)'), COUNT(*) FROM outgoing_reports \
             WHERE created_at >= $1 AND created_at < $2 AND status = 'suppressed' \
             GROUP BY COALESCE(last_error, '(no reason recorded)') ORDER BY COUNT(*) DESC LIMIT $3",
            &params,
        )
        .await?;
    let suppressed_because = suppressed.into_iter().map(|(name, count)| Named { name, count }).collect();
    Ok(SpfSection { checks, failures, results, by_source, new_sources, outbox, suppressed_because })
}

/// Incoming feedback reports, by reporter and by reported domain.
async fn incoming(r: &Reader<'_>) -> Result<IncomingSection, DigestError> {
    let totals: Vec<(i64, i64)> = r
        .rows(
            "incoming reports",
            "SELECT SUM(CASE WHEN received_at >= $2 THEN 1 ELSE 0 END), SUM(CASE WHEN received_at < $2 THEN 1 ELSE 0 END) \
             FROM feedback_reports WHERE received_at >= $1 AND received_at < $3 HAVING COUNT(*) > 0",
            &r.both_periods(),
        )
        .await?;
    let total = totals.first().map_or(Trend::new(0, 0), |&(c, p)| Trend::new(c, p));
    let params = [Param::Time(r.period.from), Param::Time(r.period.until), Param::Int(TOP as i64)];
    let by_reporter: Vec<(String, String, String, i64)> = r
        .rows(
            "incoming reports by reporter",
            "SELECT COALESCE(f.reporting_mta, m.report_from, '(unknown)'), f.feedback_type, \
                    COALESCE(f.auth_failure, ''), COUNT(*) \
             FROM feedback_reports f JOIN messages m ON m.id = f.message_id \
             WHERE f.received_at >= $1 AND f.received_at < $2 \
             GROUP BY COALESCE(f.reporting_mta, m.report_from, '(unknown)'), f.feedback_type, COALESCE(f.auth_failure, '') \
             ORDER BY COUNT(*) DESC, 1 LIMIT $3",
            &params,
        )
        .await?;
    let by_domain: Vec<(String, String, String, i64, i64)> = r
        .rows(
            "incoming reports by domain",
            "SELECT COALESCE(reported_domain, '(none)'), COALESCE(source_ip, ''), COALESCE(auth_failure, ''), \
                    COUNT(*), CAST(SUM(COALESCE(incidents, 1)) AS BIGINT) \
             FROM feedback_reports WHERE received_at >= $1 AND received_at < $2 \
             GROUP BY COALESCE(reported_domain, '(none)'), COALESCE(source_ip, ''), COALESCE(auth_failure, '') \
             ORDER BY 5 DESC, 1, 2 LIMIT $3",
            &params,
        )
        .await?;
    Ok(IncomingSection {
        total,
        by_reporter: by_reporter
            .into_iter()
            .map(|(reporter, feedback_type, auth_failure, reports)| ReporterRow {
                reporter,
                feedback_type,
                auth_failure,
                reports,
            })
            .collect(),
        by_domain: by_domain
            .into_iter()
            .map(|(domain, source_ip, auth_failure, reports, incidents)| ReportedDomainRow {
                domain,
                source_ip,
                auth_failure,
                reports,
                incidents,
            })
            .collect(),
    })
}

/// The period's bounces in the `labelling_queue` view, newest first.
async fn labelling(r: &Reader<'_>) -> Result<Listing<QueueRow>, DigestError> {
    let total = r
        .rows::<(i64,)>(
            "the labelling queue",
            "SELECT COUNT(*) FROM labelling_queue WHERE bounced_at >= $1 AND bounced_at < $2",
            &r.this_period(),
        )
        .await?
        .first()
        .map_or(0, |(n,)| *n);
    type Row = (i64, String, String, Option<String>, String, f64, Option<String>);
    let rows: Vec<Row> = r
        .rows(
            "the labelling queue",
            &format!(
                "SELECT bounce_id, {t}, recipient, status, reason, confidence, diagnostic FROM labelling_queue \
                 WHERE bounced_at >= $1 AND bounced_at < $2 ORDER BY bounced_at DESC, bounce_id DESC LIMIT $3",
                t = r.dialect.text("bounced_at")
            ),
            &[Param::Time(r.period.from), Param::Time(r.period.until), Param::Int(LIST)],
        )
        .await?;
    let rows = rows
        .into_iter()
        .map(|(bounce_id, bounced_at, recipient, status, reason, confidence, diagnostic)| QueueRow {
            bounce_id,
            bounced_at,
            recipient,
            status: status.unwrap_or_default(),
            reason,
            confidence: format!("{confidence:.2}"),
            diagnostic: shorten(diagnostic),
        })
        .collect();
    Ok(Listing { total, rows })
}
