//! The digest's queries. Each runs unchanged on SQLite and Postgres: times are bound as text on SQLite
//! (where they are stored `YYYY-MM-DD HH:MM:SS`) and as `timestamptz` on Postgres, and the few expressions
//! that differ (time as text) come from [`Dialect`]. Every value (times, reason names, bucket labels) is a
//! bound parameter ([`Binds`]), never SQL text. Every query is bounded by the period (and the indexes on
//! `bounced_at`, `checked_at`, `received_at`), so a digest stays fast on a large database.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::FromRow;

use super::{
    Digest, DigestError, GroupRow, IncomingSection, Listing, Named, Period, QueueRow, ReasonRow,
    ReportedDomainRow, ReporterRow, SeriesPoint, SpfFailureRow, SpfResultRow, SpfSection, SuppressRow, Trend,
};
use crate::store::spf::SUPPRESSED_KEY;
use crate::store::{Backend, Store};

/// Reasons that are recorded but are not failures.
pub const NOT_FAILURES: &[&str] = &["delivered", "vacation", "feedback"];
/// SQL condition "is a failure" on `bounces`.
const IS_FAILURE: &str = "reason NOT IN ('delivered', 'vacation', 'feedback')";
/// SPF results that count as failures.
const SPF_FAILURE: &str = "result IN ('fail', 'softfail', 'permerror')";
/// Why a planned SPF report was not queued (the suffix of its counter's key), and how the digest says it.
const NOT_QUEUED: [(&str, &str); 3] = [
    ("rate-limit", "the per-address rate limit"),
    ("hourly-cap", "the hourly cap"),
    ("bounced", "the report address bounced"),
];
/// Rows shown in the top-N tables.
const TOP: usize = 10;
/// Rows shown of the suppression list and of the labelling queue.
const LIST: i64 = 50;
/// Characters kept of a diagnostic.
const DIAGNOSTIC_CHARS: usize = 140;

/// A bound parameter.
#[derive(Debug, Clone, Copy)]
enum Param<'a> {
    Time(DateTime<Utc>),
    Int(i64),
    Text(&'a str),
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
}

/// The parameters of one query, collected while its SQL is written: [`Binds::bind`] adds one and returns its
/// placeholder, so values (reason names, bucket labels, times) never enter the SQL text.
struct Binds<'a>(Vec<Param<'a>>);

impl<'a> Binds<'a> {
    /// Start after the parameters the query's fixed text already uses (`$1`, `$2`, ...).
    fn after(fixed: &[Param<'a>]) -> Self {
        Binds(fixed.to_vec())
    }

    /// Add a parameter; its placeholder (`$n`).
    fn bind(&mut self, p: Param<'a>) -> String {
        self.0.push(p);
        format!("${}", self.0.len())
    }

    /// `(VALUES ($n), ($n+1)) AS name`: a one-column table of bound texts (its column is `column1` on both
    /// backends).
    fn values(&mut self, name: &str, items: &[&'a str]) -> String {
        let rows: Vec<String> = items.iter().map(|i| format!("({})", self.bind(Param::Text(i)))).collect();
        format!("(VALUES {}) AS {name}", rows.join(", "))
    }

    /// `$n, $n+1, ...` for an `IN (...)` list of bound texts.
    fn list(&mut self, items: &[&'a str]) -> String {
        items.iter().map(|i| self.bind(Param::Text(i))).collect::<Vec<_>>().join(", ")
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
    async fn rows<T>(&self, what: &'static str, sql: &str, params: &[Param<'_>]) -> Result<Vec<T>, DigestError>
    where
        T: Send + Unpin + for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow>,
    {
        let result = if let Some(pool) = self.store.sqlite_pool() {
            let mut query = sqlx::query_as::<_, T>(sql);
            for p in params {
                query = match *p {
                    Param::Time(t) => query.bind(t.format("%Y-%m-%d %H:%M:%S").to_string()),
                    Param::Int(i) => query.bind(i),
                    Param::Text(s) => query.bind(s),
                };
            }
            query.fetch_all(pool).await
        } else if let Some(pool) = self.store.postgres_pool() {
            let mut query = sqlx::query_as::<_, T>(sql);
            for p in params {
                query = match *p {
                    Param::Time(t) => query.bind(t),
                    Param::Int(i) => query.bind(i),
                    Param::Text(s) => query.bind(s),
                };
            }
            query.fetch_all(pool).await
        } else {
            Ok(Vec::new())
        };
        result.map_err(|source| DigestError::Query { what, db: self.store.display_url().to_string(), source })
    }

    /// `$1` = start of the previous period, `$2` = start of the period, `$3` = its end.
    fn both_periods(&self) -> [Param<'static>; 3] {
        [Param::Time(self.period.previous_from()), Param::Time(self.period.from), Param::Time(self.period.until)]
    }

    /// `$1` = start of the period, `$2` = its end.
    fn this_period(&self) -> [Param<'static>; 2] {
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

    // Two lanes on two pooled connections (SQLite in WAL reads in parallel; the others stay free for the
    // writers): the suppression list, the costliest part (one index seek per hard bounce of the period),
    // beside everything else.
    let recorded = distinct_values(&r, "reason", "the reasons recorded").await?;
    let (suppression, rest) = tokio::try_join!(suppression(&r, &recorded), async {
        let messages = messages(&r).await?;
        let overview = overview(&r, &recorded).await?;
        let new_reasons = new_reasons(&r, &overview.0, &overview.1).await?;
        let domains = groups(&r, "recipient_domain", "recipient domains").await?;
        let mtas = groups(&r, "remote_mta", "remote MTAs").await?;
        let spf = spf(&r).await?;
        let incoming = incoming(&r).await?;
        let labelling = labelling(&r).await?;
        Ok::<_, DigestError>((messages, overview, new_reasons, domains, mtas, spf, incoming, labelling))
    })?;
    let (messages, (reasons, other_events, failures, hard, series), new_reasons, domains, mtas, spf, incoming, labelling) =
        rest;
    let ((domains, new_domains), (mtas, new_mtas)) = (domains, mtas);
    let messages_total = Trend::new(
        messages.iter().map(|(_, t)| t.current).sum(),
        messages.iter().map(|(_, t)| t.previous).sum(),
    );
    let soft = Trend::new(failures.current - hard.current, failures.previous - hard.previous);

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
        previous: period.describe_previous(),
        bucket: period.bucket(),
        database: store.display_url().to_string(),
        database_empty,
        period_empty,
        messages,
        messages_total,
        failures,
        hard,
        soft,
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

/// Messages received by kind, in the period and the one before: two range counts per kind on the
/// `(kind, received_at)` index.
async fn messages(r: &Reader<'_>) -> Result<Vec<(String, Trend)>, DigestError> {
    let mut binds = Binds::after(&r.both_periods());
    let kinds = binds.values("k", &["dsn", "bounce", "arf", "autoreply", "unparsed"]);
    let rows: Vec<(String, i64, i64)> = r
        .rows(
            "messages by kind",
            &format!(
                "SELECT k.column1, \
                        (SELECT COUNT(*) FROM messages WHERE kind = k.column1 AND received_at >= $2 AND received_at < $3), \
                        (SELECT COUNT(*) FROM messages WHERE kind = k.column1 AND received_at >= $1 AND received_at < $2) \
                 FROM {kinds}"
            ),
            &binds.0,
        )
        .await?;
    Ok(rows
        .into_iter()
        .filter(|(_, cur, prev)| *cur > 0 || *prev > 0)
        .map(|(kind, cur, prev)| (kind, Trend::new(cur, prev)))
        .collect())
}

/// Hard bounces and all events of one reason and bucket, counted in one pass: each hard bounce adds
/// `HARD_UNIT + 1`, any other event 1, so the sum is `hard * HARD_UNIT + all` (no bucket holds 2^32 events).
const HARD_UNIT: i64 = 1 << 32;

/// The overview of both periods in one pass over the `bounces_digest` index: failures by reason (with trend
/// and share), the non-failure events, total failures and hard bounces, and the hard/soft series (with a
/// zero for every empty bucket). `reasons` are every reason recorded.
#[allow(clippy::type_complexity)]
async fn overview(
    r: &Reader<'_>,
    reasons: &[String],
) -> Result<(Vec<ReasonRow>, Vec<Named>, Trend, Trend, Vec<SeriesPoint>), DigestError> {
    let bucket = r.period.bucket();
    let ranges = bucket.ranges(r.period.from, r.period.until);
    let mut rows: Vec<(String, String, i64, i64)> = Vec::new();
    if !reasons.is_empty() {
        // One range scan per reason and bucket on the (reason, bounced_at, hard_bounce) index, counting hard
        // bounces and all events at once (HARD_UNIT); the previous period is the bucket labelled ''.
        let mut binds = Binds::after(&[]);
        let previous = ("", r.period.previous_from(), r.period.from);
        let buckets: Vec<String> = std::iter::once(previous)
            .chain(ranges.iter().map(|(label, start, end)| (label.as_str(), *start, *end)))
            .map(|(label, start, end)| {
                let (label, start, end) =
                    (binds.bind(Param::Text(label)), binds.bind(Param::Time(start)), binds.bind(Param::Time(end)));
                format!("({label}, {start}, {end})")
            })
            .collect();
        let reason_refs: Vec<&str> = reasons.iter().map(String::as_str).collect();
        let reason_table = binds.values("r", &reason_refs);
        let counts: Vec<(String, String, Option<i64>)> = r
            .rows(
                "bounces by reason and time",
                &format!(
                    "SELECT b.column1, r.column1, \
                            (SELECT CAST(SUM(CASE WHEN hard_bounce THEN {} ELSE 1 END) AS BIGINT) FROM bounces \
                             WHERE reason = r.column1 AND bounced_at >= b.column2 AND bounced_at < b.column3) \
                     FROM {reason_table}, (VALUES {}) AS b",
                    HARD_UNIT + 1,
                    buckets.join(", ")
                ),
                &binds.0,
            )
            .await?;
        for (label, reason, packed) in counts {
            let packed = packed.unwrap_or(0);
            let (hard, all) = (packed / HARD_UNIT, packed % HARD_UNIT);
            if hard > 0 {
                rows.push((label.clone(), reason.clone(), 1, hard));
            }
            if all > hard {
                rows.push((label, reason, 0, all - hard));
            }
        }
    }
    // reason -> (current, previous, hard current, hard previous)
    let mut by_reason: BTreeMap<String, (i64, i64, i64, i64)> = BTreeMap::new();
    let mut by_bucket: HashMap<String, (i64, i64)> = HashMap::new();
    for (label, reason, hard, n) in rows {
        let hard = hard != 0;
        let counts = by_reason.entry(reason.clone()).or_default();
        if label.is_empty() {
            counts.1 += n;
            counts.3 += if hard { n } else { 0 };
            continue;
        }
        counts.0 += n;
        counts.2 += if hard { n } else { 0 };
        if !NOT_FAILURES.contains(&reason.as_str()) {
            let point = by_bucket.entry(label).or_default();
            if hard {
                point.0 += n;
            } else {
                point.1 += n;
            }
        }
    }
    let mut other = Vec::new();
    let mut failures = Vec::new();
    let (mut cur, mut prev, mut hard_cur, mut hard_prev) = (0, 0, 0, 0);
    for (reason, (c, p, hc, hp)) in by_reason {
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
    let series = ranges
        .into_iter()
        .map(|(label, _, _)| {
            let (hard, soft) = by_bucket.get(&label).copied().unwrap_or((0, 0));
            SeriesPoint { bucket: label, hard, soft }
        })
        .collect();
    Ok((rows, other, Trend::new(cur, prev), Trend::new(hard_cur, hard_prev), series))
}

/// The top values of `column` (recipient domain, remote MTA) by failures with their dominant reason, and
/// the values seen in the period and never before it.
///
/// Every value ever recorded is listed by a loose scan of the `(column, bounced_at)` index, with its events in
/// the period (a range count on the same index) and whether it was seen before. The [`TOP`] busiest (by all
/// their events) are then counted by reason, failures only, so no row is read for the others.
async fn groups(r: &Reader<'_>, column: &str, what: &'static str) -> Result<(Vec<GroupRow>, Vec<Named>), DigestError> {
    let active: Vec<(String, i64, bool)> = r
        .rows(
            what,
            &format!(
                "{} \
                 SELECT v, n, seen FROM ( \
                     SELECT v, (SELECT COUNT(*) FROM bounces WHERE {column} = d.v AND bounced_at >= $1 AND bounced_at < $2) AS n, \
                            EXISTS (SELECT 1 FROM bounces WHERE {column} = d.v AND bounced_at < $1) AS seen \
                     FROM d WHERE v IS NOT NULL \
                 ) AS x WHERE n > 0",
                loose_scan(column)
            ),
            &r.this_period(),
        )
        .await?;
    let mut new: Vec<Named> =
        active.iter().filter(|(_, _, seen)| !seen).map(|(v, n, _)| Named { name: v.clone(), count: *n }).collect();
    new.sort_by(|a, b| b.count.cmp(&a.count).then(a.name.cmp(&b.name)));
    new.truncate(TOP);

    let mut busiest: Vec<&(String, i64, bool)> = active.iter().collect();
    busiest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut rows = Vec::new();
    for (name, _, _) in busiest.into_iter().take(TOP) {
        let reasons: Vec<(String, i64, i64)> = r
            .rows(
                what,
                &format!(
                    "SELECT reason, COUNT(*), SUM(CASE WHEN hard_bounce THEN 1 ELSE 0 END) FROM bounces \
                     WHERE {column} = $3 AND bounced_at >= $1 AND bounced_at < $2 AND {IS_FAILURE} GROUP BY reason"
                ),
                &[Param::Time(r.period.from), Param::Time(r.period.until), Param::Text(name)],
            )
            .await?;
        let (failures, hard) = reasons.iter().fold((0, 0), |(f, h), (_, n, hn)| (f + n, h + hn));
        if failures == 0 {
            continue;
        }
        let (dominant_reason, dominant_count) = reasons
            .iter()
            .map(|(reason, n, _)| (reason.clone(), *n))
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .unwrap_or_default();
        rows.push(GroupRow { name: name.clone(), failures, hard, dominant_reason, dominant_count });
    }
    rows.sort_by(|a, b| b.failures.cmp(&a.failures).then(a.name.cmp(&b.name)));
    rows.truncate(TOP);
    Ok((rows, new))
}

/// Reasons of the period (failures and other events) never recorded before it. One `EXISTS` per reason:
/// a reason seen before is found at the oldest end of the `bounced_at` index at once.
async fn new_reasons(r: &Reader<'_>, reasons: &[ReasonRow], other: &[Named]) -> Result<Vec<Named>, DigestError> {
    let mut new = Vec::new();
    let seen = reasons
        .iter()
        .filter(|row| row.trend.current > 0)
        .map(|row| Named { name: row.reason.clone(), count: row.trend.current })
        .chain(other.iter().cloned());
    for candidate in seen {
        let before: Vec<(String,)> = r
            .rows(
                "reasons seen before",
                "SELECT reason FROM bounces WHERE reason = $2 AND bounced_at < $1 LIMIT 1",
                &[Param::Time(r.period.from), Param::Text(&candidate.name)],
            )
            .await?;
        if before.is_empty() {
            new.push(candidate);
        }
    }
    new.sort_by(|a, b| b.count.cmp(&a.count).then(a.name.cmp(&b.name)));
    Ok(new)
}

/// Every distinct value of an indexed `column` of `bounces`, by a loose index scan (one index seek per
/// value, instead of reading every row).
async fn distinct_values(r: &Reader<'_>, column: &str, what: &'static str) -> Result<Vec<String>, DigestError> {
    let rows: Vec<(String,)> = r
        .rows(
            what,
            &format!("{} SELECT v FROM d WHERE v IS NOT NULL", loose_scan(column)),
            &[],
        )
        .await?;
    Ok(rows.into_iter().map(|(v,)| v).collect())
}

/// `WITH RECURSIVE d(v)`: every distinct value of an indexed `column` of `bounces`, one index seek per value
/// (a loose index scan) instead of a read of every row; the last `v` is NULL.
fn loose_scan(column: &str) -> String {
    format!(
        "WITH RECURSIVE d(v) AS ( \
             SELECT MIN({column}) FROM bounces \
             UNION ALL \
             SELECT (SELECT MIN({column}) FROM bounces WHERE {column} > d.v) FROM d WHERE d.v IS NOT NULL \
         )"
    )
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
///
/// `reasons` are every reason recorded: naming them lets the count seek the `(reason, bounced_at,
/// hard_bounce, recipient)` index (and read `hard_bounce` from it) instead of reading the period's rows.
async fn suppression(r: &Reader<'_>, reasons: &[String]) -> Result<Listing<SuppressRow>, DigestError> {
    if reasons.is_empty() {
        return Ok(Listing { total: 0, rows: Vec::new() });
    }
    let latest = "b.bounced_at >= $1 AND b.bounced_at < $2 AND b.hard_bounce \
         AND NOT EXISTS (SELECT 1 FROM bounces l WHERE l.recipient = b.recipient AND l.bounced_at >= b.bounced_at \
                         AND (l.bounced_at > b.bounced_at OR l.id > b.id))";
    let mut binds = Binds::after(&r.this_period());
    let reasons = binds.list(&reasons.iter().map(String::as_str).collect::<Vec<_>>());
    // The count seeks each hard reason's range; the newest rows walk the time index backwards and stop at LIST.
    let total = r
        .rows::<(i64,)>(
            "the suppression list",
            &format!("SELECT COUNT(*) FROM bounces b WHERE b.reason IN ({reasons}) AND {latest}"),
            &binds.0,
        )
        .await?
        .first()
        .map_or(0, |(n,)| *n);
    /// recipient, reason, status, bounced_at, diagnostic
    type Row = (String, String, Option<String>, String, Option<String>);
    let rows: Vec<Row> = r
        .rows(
            "the suppression list",
            &format!(
                "SELECT b.recipient, b.reason, b.status, {t}, b.diagnostic FROM bounces b WHERE {latest} \
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
    // Range counts per result on the (result, checked_at, identity) index, for both periods.
    let order = ["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"];
    let mut binds = Binds::after(&r.both_periods());
    let results_table = binds.values("v", &order);
    let rows: Vec<(String, i64, i64, i64)> = r
        .rows(
            "SPF checks",
            &format!(
                "SELECT v.column1, \
                        (SELECT COUNT(*) FROM spf_checks WHERE result = v.column1 AND checked_at >= $2 AND checked_at < $3 \
                         AND identity = 'mail_from'), \
                        (SELECT COUNT(*) FROM spf_checks WHERE result = v.column1 AND checked_at >= $2 AND checked_at < $3 \
                         AND identity = 'helo'), \
                        (SELECT COUNT(*) FROM spf_checks WHERE result = v.column1 AND checked_at >= $1 AND checked_at < $2) \
                 FROM {results_table}"
            ),
            &binds.0,
        )
        .await?;
    let failing = ["fail", "softfail", "permerror"];
    let (mut checks, mut failures) = ((0, 0), (0, 0));
    let mut results: Vec<SpfResultRow> = Vec::new();
    for (result, mail_from, helo, previous) in rows {
        let failed = failing.contains(&result.as_str());
        checks.0 += mail_from + helo;
        checks.1 += previous;
        if failed {
            failures.0 += mail_from + helo;
            failures.1 += previous;
        }
        if mail_from + helo > 0 {
            results.push(SpfResultRow { result, mail_from, helo });
        }
    }
    let (checks, failures) = (Trend::new(checks.0, checks.1), Trend::new(failures.0, failures.1));

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
            "SELECT status, COUNT(*) FROM outgoing_reports WHERE created_at >= $1 AND created_at < $2 AND kind <> 'digest' \
             GROUP BY status",
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
             WHERE created_at >= $1 AND created_at < $2 AND status = 'suppressed' AND kind <> 'digest' \
             GROUP BY COALESCE(last_error, '(no reason recorded)') ORDER BY COUNT(*) DESC LIMIT $3",
            &params,
        )
        .await?;
    let mut suppressed_because: Vec<Named> = suppressed.into_iter().map(|(name, count)| Named { name, count }).collect();
    // Reports refused before the outbox are counted per hour in rate_limits (store::spf::SUPPRESSED_KEY).
    let key_names = NOT_QUEUED.map(|(why, _)| format!("{SUPPRESSED_KEY}{why}"));
    let mut binds = Binds::after(&r.this_period());
    let keys = binds.list(&key_names.iter().map(String::as_str).collect::<Vec<_>>());
    let not_queued: Vec<(String, i64)> = r
        .rows(
            "reports not queued",
            &format!(
                "SELECT key, CAST(SUM(count) AS BIGINT) FROM rate_limits WHERE key IN ({keys}) AND window_start >= $1 AND window_start < $2 \
                 GROUP BY key"
            ),
            &binds.0,
        )
        .await?;
    let mut rate_limited = 0;
    for (key, count) in not_queued {
        let why = key.strip_prefix(SUPPRESSED_KEY).unwrap_or(&key);
        if why != "bounced" {
            rate_limited += count;
        }
        let name = NOT_QUEUED.iter().find(|(w, _)| *w == why).map_or(why, |(_, text)| text).to_string();
        suppressed_because.push(Named { name, count });
    }
    suppressed_because.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
    Ok(SpfSection { checks, failures, results, by_source, new_sources, outbox, rate_limited, suppressed_because })
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
