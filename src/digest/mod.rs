//! Digests: what happened in a period (bounces, reasons, suppression list, SPF, incoming reports, the
//! labelling queue) compared with the period before, as one self-contained HTML page (inline CSS and SVG
//! charts, no JavaScript, nothing fetched) or as plain text saying the same.
//!
//! [`collect`] reads the numbers from the store ([`query`]), [`render::html`] and [`render::text`] turn them
//! into documents with minijinja templates (`templates/`) and plotters charts ([`charts`]).
//! [`schedule`] writes digests into a directory on a schedule (`[digest]` of the configuration).

pub mod charts;
pub mod mail;
pub mod query;
pub mod render;
pub mod schedule;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, Months, NaiveDate, NaiveDateTime, Timelike, Utc};
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

pub use query::collect;
pub use schedule::Schedule;

/// The `[digest]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestConfig {
    /// When `serve` writes a digest: `off`, `hourly`, `daily HH:MM` or `weekly DAY HH:MM` (UTC).
    #[serde(default)]
    pub schedule: Schedule,
    /// Addresses to mail scheduled digests to (through the report outbox and the `[smtp]` relay).
    #[serde(default)]
    pub to: Vec<String>,
    /// The From address of mailed digests (required with `to` or `rebound digest --mail-to`).
    #[serde(default)]
    pub from: String,
    /// The display name of the From address.
    #[serde(default = "default_from_name")]
    pub from_name: String,
    /// DKIM keys (names of `[dkim.NAME]` sections) to sign mailed digests with; empty: those of
    /// `[report.spf] sign`.
    #[serde(default)]
    pub sign: Vec<String>,
    /// Directory where scheduled digests are written (`digest-YYYYMMDD-HHMM.html` and `.txt`).
    #[serde(default)]
    pub out_dir: Option<PathBuf>,
}

fn default_from_name() -> String {
    "rebound".to_string()
}

impl Default for DigestConfig {
    fn default() -> Self {
        DigestConfig {
            schedule: Schedule::Off,
            to: Vec::new(),
            from: String::new(),
            from_name: default_from_name(),
            sign: Vec::new(),
            out_dir: None,
        }
    }
}

impl DigestConfig {
    /// Check the section without touching the file system: a schedule needs somewhere to put digests
    /// (`out_dir`, `to` or both), and mailing needs valid addresses.
    pub fn validate(&self) -> Result<(), DigestError> {
        if !self.to.is_empty() {
            self.validate_mail()?;
            if let Some(bad) = self.to.iter().find(|a| !mail::valid_address(a)) {
                return Err(DigestError::Config(format!("[digest] to: {bad:?} is not a mail address")));
            }
        }
        if self.schedule != Schedule::Off && self.out_dir.is_none() && self.to.is_empty() {
            return Err(DigestError::Config(format!(
                "[digest] schedule = \"{}\" needs out_dir (where to write the digests) or to (whom to mail them)",
                self.schedule
            )));
        }
        Ok(())
    }

    /// What mailing a digest needs: a valid `from`.
    pub fn validate_mail(&self) -> Result<(), DigestError> {
        if !mail::valid_address(&self.from) {
            return Err(DigestError::Config(format!(
                "[digest] from = {:?}: mailing digests needs a From address, e.g. from = \"rebound@example.com\"",
                self.from
            )));
        }
        Ok(())
    }
}

/// Errors of digest generation.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    /// Reading the database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A query failed (context says which part of the digest).
    #[error("cannot read {what} for the digest from {db}: {source}")]
    Query {
        /// The part of the digest.
        what: &'static str,
        /// The database URL (without password).
        db: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// Drawing a chart failed.
    #[error("cannot draw the {chart} chart: {source}")]
    Chart {
        /// Which chart.
        chart: &'static str,
        /// The plotting error.
        source: plotters::drawing::DrawingAreaErrorKind<std::io::Error>,
    },
    /// A DKIM key for mailed digests could not be loaded or used.
    #[error(transparent)]
    Dkim(#[from] crate::report::dkim::DkimError),
    /// A template failed to render.
    #[error("cannot render the digest template: {0}")]
    Template(#[from] minijinja::Error),
    /// A wrong `--since`, `--until`, schedule or `[digest]` setting.
    #[error("{0}")]
    Config(String),
    /// Writing the digest failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl DigestError {
    /// Whether trying again later can succeed (the database was busy or unreachable).
    pub fn is_temporary(&self) -> bool {
        match self {
            DigestError::Store(e) => e.is_temporary(),
            DigestError::Query { source, .. } => {
                matches!(source, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed)
            }
            _ => false,
        }
    }
}

/// The output format of a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One self-contained HTML page.
    Html,
    /// Plain text.
    Text,
}

/// The length of a digest period, written `90m`, `24h`, `7d` or `2w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Since(Duration);

impl Since {
    /// The period's length.
    pub fn duration(self) -> Duration {
        self.0
    }

    /// A period of `duration` (at least one minute).
    pub fn new(duration: Duration) -> Result<Since, DigestError> {
        if duration < Duration::minutes(1) {
            return Err(DigestError::Config("the period must be at least one minute".to_string()));
        }
        Ok(Since(duration))
    }
}

impl FromStr for Since {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Since, DigestError> {
        let bad = || DigestError::Config(format!("invalid period {s:?}: expected a number and a unit, e.g. 90m, 24h, 7d, 2w"));
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (number, unit) = s.split_at(split);
        let n: i64 = number.parse().map_err(|_| bad())?;
        let minutes = match unit.trim() {
            "m" | "min" => 1,
            "h" => 60,
            "d" => 24 * 60,
            "w" => 7 * 24 * 60,
            _ => return Err(bad()),
        };
        // Ten years at most, so the arithmetic on dates cannot overflow.
        let total = n.checked_mul(minutes).filter(|m| *m <= 3660 * 24 * 60).ok_or_else(|| {
            DigestError::Config(format!("invalid period {s:?}: at most ten years"))
        })?;
        Since::new(Duration::minutes(total))
    }
}

impl fmt::Display for Since {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0.num_minutes();
        if m % (7 * 24 * 60) == 0 {
            write!(f, "{}w", m / (7 * 24 * 60))
        } else if m % (24 * 60) == 0 {
            write!(f, "{}d", m / (24 * 60))
        } else if m % 60 == 0 {
            write!(f, "{}h", m / 60)
        } else {
            write!(f, "{m}m")
        }
    }
}

/// Parse an `--until` time: RFC 3339, `YYYY-MM-DD HH:MM[:SS]` (UTC) or `YYYY-MM-DD` (midnight UTC).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, DigestError> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(t.and_utc());
    }
    Err(DigestError::Config(format!(
        "invalid time {s:?}: expected e.g. 2026-12-01, 2026-12-01 07:00 or 2026-12-01T07:00:00Z"
    )))
}

/// The granularity of the digest's time series, chosen from the period's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    /// Periods up to two days.
    Hour,
    /// Periods up to 120 days.
    Day,
    /// Longer periods.
    Month,
}

impl Bucket {
    /// The bucket for a period of `length`.
    pub fn for_length(length: Duration) -> Bucket {
        if length <= Duration::days(2) {
            Bucket::Hour
        } else if length <= Duration::days(120) {
            Bucket::Day
        } else {
            Bucket::Month
        }
    }

    /// The label of the bucket holding `t`, as the queries write it (`YYYY-MM-DD HH`, `YYYY-MM-DD`, `YYYY-MM`).
    pub fn label(self, t: DateTime<Utc>) -> String {
        match self {
            Bucket::Hour => t.format("%Y-%m-%d %H").to_string(),
            Bucket::Day => t.format("%Y-%m-%d").to_string(),
            Bucket::Month => t.format("%Y-%m").to_string(),
        }
    }

    /// The start of the bucket holding `t`.
    fn start(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let date = t.date_naive();
        let start = match self {
            Bucket::Hour => date.and_hms_opt(t.hour(), 0, 0),
            Bucket::Day => date.and_hms_opt(0, 0, 0),
            Bucket::Month => date.with_day(1).and_then(|d| d.and_hms_opt(0, 0, 0)),
        };
        start.map_or(t, |s| s.and_utc())
    }

    /// The start of the bucket after the one starting at `start`.
    fn next(self, start: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Bucket::Hour => start + Duration::hours(1),
            Bucket::Day => start + Duration::days(1),
            Bucket::Month => start.checked_add_months(Months::new(1)).unwrap_or(start + Duration::days(31)),
        }
    }

    /// Every bucket that the period from `from` (inclusive) to `until` (exclusive) touches, in order, as
    /// (label, start, end) clipped to the period: the first and last may be partial.
    pub fn ranges(self, from: DateTime<Utc>, until: DateTime<Utc>) -> Vec<(String, DateTime<Utc>, DateTime<Utc>)> {
        let mut ranges = Vec::new();
        let mut start = from;
        while start < until {
            let end = self.next(self.start(start)).min(until);
            ranges.push((self.label(start), start, end));
            start = end;
        }
        ranges
    }
}

/// The period a digest covers, and the one before it (for trends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// Start of the period (inclusive).
    pub from: DateTime<Utc>,
    /// End of the period (exclusive).
    pub until: DateTime<Utc>,
    /// How long it is.
    pub since: Since,
}

impl Period {
    /// The period of length `since` that ends at `until`.
    pub fn ending(until: DateTime<Utc>, since: Since) -> Period {
        Period { from: until - since.duration(), until, since }
    }

    /// Start of the previous period, of the same length.
    pub fn previous_from(&self) -> DateTime<Utc> {
        self.from - self.since.duration()
    }

    /// The time-series granularity.
    pub fn bucket(&self) -> Bucket {
        Bucket::for_length(self.since.duration())
    }

    /// The period's length in words: (`7`, `"day"`), (`24`, `"hour"`), ...
    fn length_in_words(&self) -> (i64, &'static str) {
        let m = self.since.duration().num_minutes();
        if m % (7 * 24 * 60) == 0 && m >= 14 * 24 * 60 {
            (m / (7 * 24 * 60), "week")
        } else if m % (24 * 60) == 0 {
            (m / (24 * 60), "day")
        } else if m % 60 == 0 {
            (m / 60, "hour")
        } else {
            (m, "minute")
        }
    }

    /// "the last 24 hours", "the last 7 days", ...
    pub fn describe(&self) -> String {
        match self.length_in_words() {
            (1, unit) => format!("the last {unit}"),
            (n, unit) => format!("the last {n} {unit}s"),
        }
    }

    /// "the 24 hours before", "the 7 days before", ...
    pub fn describe_previous(&self) -> String {
        match self.length_in_words() {
            (1, unit) => format!("the {unit} before"),
            (n, unit) => format!("the {n} {unit}s before"),
        }
    }
}

/// Read everything for a digest of `period` from `store`: a shortcut for [`collect`].
pub async fn digest(store: &Store, period: Period) -> Result<Digest, DigestError> {
    collect(store, period).await
}

/// A number now and in the previous period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trend {
    /// In the period.
    pub current: i64,
    /// In the previous period.
    pub previous: i64,
    /// The change, e.g. `+12%`, `-5%`, `new`, `=`.
    pub change: String,
    /// `up`, `down` or `flat`, for styling.
    pub direction: &'static str,
}

impl Trend {
    /// The trend from `previous` to `current`.
    pub fn new(current: i64, previous: i64) -> Trend {
        let (change, direction) = if current == previous {
            ("=".to_string(), "flat")
        } else if previous == 0 {
            ("new".to_string(), "up")
        } else {
            let pct = (current - previous) as f64 * 100.0 / previous as f64;
            let direction = if current > previous { "up" } else { "down" };
            (format!("{pct:+.0}%"), direction)
        };
        Trend { current, previous, change, direction }
    }
}

/// A named count (a reason, a kind, a status).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Named {
    /// The name.
    pub name: String,
    /// How many.
    pub count: i64,
}

/// One reason in the period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReasonRow {
    /// The reason.
    pub reason: String,
    /// Its bounces now and before.
    pub trend: Trend,
    /// Of them hard bounces (in the period).
    pub hard: i64,
    /// Share of the period's failures, e.g. `41.2%`.
    pub share: String,
}

/// One point of the hard/soft time series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesPoint {
    /// The bucket's label (`YYYY-MM-DD HH`, `YYYY-MM-DD` or `YYYY-MM`).
    pub bucket: String,
    /// Hard bounces.
    pub hard: i64,
    /// Soft (other) failures.
    pub soft: i64,
}

/// A recipient domain or remote MTA with its failures and dominant reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupRow {
    /// The domain or MTA.
    pub name: String,
    /// Failures in the period.
    pub failures: i64,
    /// Of them hard bounces.
    pub hard: i64,
    /// The most frequent reason.
    pub dominant_reason: String,
    /// How many failures had that reason.
    pub dominant_count: i64,
}

/// An address to suppress.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SuppressRow {
    /// The address.
    pub recipient: String,
    /// Its reason.
    pub reason: String,
    /// Enhanced status code, if known.
    pub status: String,
    /// When it bounced (UTC).
    pub bounced_at: String,
    /// The diagnostic, shortened.
    pub diagnostic: String,
}

/// An SPF result and how often each identity got it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpfResultRow {
    /// `pass`, `fail`, ...
    pub result: String,
    /// Checks of the MAIL FROM identity with this result.
    pub mail_from: i64,
    /// Checks of the HELO identity with this result.
    pub helo: i64,
}

/// SPF failures of one domain from one source IP.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpfFailureRow {
    /// The checked domain.
    pub domain: String,
    /// The client IP.
    pub client_ip: String,
    /// The worst result seen (`fail`, `softfail`, `permerror`).
    pub result: String,
    /// Failures in the period.
    pub failures: i64,
    /// First failure in the period (UTC).
    pub first_seen: String,
    /// Last failure in the period (UTC).
    pub last_seen: String,
}

/// The SPF part of a digest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpfSection {
    /// Checks in the period, and before.
    pub checks: Trend,
    /// Failures (fail, softfail, permerror) in the period, and before.
    pub failures: Trend,
    /// Results by identity.
    pub results: Vec<SpfResultRow>,
    /// Top failing domain/IP pairs.
    pub by_source: Vec<SpfFailureRow>,
    /// Failing domain/IP pairs never seen failing before the period.
    pub new_sources: Vec<SpfFailureRow>,
    /// SPF failure reports created in the period, by status (`queued`, `sending`, `sent`, `failed`,
    /// `suppressed`); mailed digests are not counted.
    pub outbox: Vec<Named>,
    /// Reports planned in the period but not queued because of the per-address rate limit or the hourly
    /// cap (counted per hour: the hours that start in the period).
    pub rate_limited: i64,
    /// Why reports were not sent: the rate limits, a bounced report address (the same hourly counters), and
    /// the `last_error` of outbox entries marked `suppressed`.
    pub suppressed_because: Vec<Named>,
}

/// Incoming feedback reports by reporter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReporterRow {
    /// Reporting-MTA or the report's From.
    pub reporter: String,
    /// Feedback-Type.
    pub feedback_type: String,
    /// Auth-Failure, if any.
    pub auth_failure: String,
    /// Reports in the period.
    pub reports: i64,
}

/// Incoming feedback reports about one of our domains from one source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportedDomainRow {
    /// Reported-Domain.
    pub domain: String,
    /// Source-IP.
    pub source_ip: String,
    /// Auth-Failure, if any.
    pub auth_failure: String,
    /// Reports in the period.
    pub reports: i64,
    /// Incidents (the Incidents field, 1 when absent).
    pub incidents: i64,
}

/// The incoming-reports part of a digest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IncomingSection {
    /// Reports received in the period, and before.
    pub total: Trend,
    /// By reporter.
    pub by_reporter: Vec<ReporterRow>,
    /// By reported domain and source.
    pub by_domain: Vec<ReportedDomainRow>,
}

/// A bounce waiting for a label.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueRow {
    /// `bounces.id`, for `rebound label`.
    pub bounce_id: i64,
    /// When it bounced.
    pub bounced_at: String,
    /// The address.
    pub recipient: String,
    /// Status code, if any.
    pub status: String,
    /// The classifier's guess.
    pub reason: String,
    /// Its confidence, e.g. `0.42`.
    pub confidence: String,
    /// The diagnostic, shortened.
    pub diagnostic: String,
}

/// A list shown in part: the first rows and how many there are in all.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listing<T> {
    /// How many in all.
    pub total: i64,
    /// The rows shown.
    pub rows: Vec<T>,
}

/// Everything a digest shows, ready for the templates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Digest {
    /// "the last 7 days".
    pub period: String,
    /// Start of the period, `YYYY-MM-DD HH:MM` UTC.
    pub from: String,
    /// End of the period.
    pub until: String,
    /// The period's length as given (`7d`).
    pub since: String,
    /// The previous period, in words ("the 7 days before").
    pub previous: String,
    /// The time-series granularity.
    pub bucket: Bucket,
    /// The database (password hidden).
    pub database: String,
    /// No data at all in the database.
    pub database_empty: bool,
    /// Nothing happened in the period.
    pub period_empty: bool,
    /// Messages received by kind, with trend.
    pub messages: Vec<(String, Trend)>,
    /// All messages received.
    pub messages_total: Trend,
    /// Failures (bounces other than deliveries, auto-replies and feedback).
    pub failures: Trend,
    /// Hard bounces.
    pub hard: Trend,
    /// Soft failures.
    pub soft: Trend,
    /// Non-failure events recorded (delivered, vacation, feedback).
    pub other_events: Vec<Named>,
    /// Failures by reason, most frequent first.
    pub reasons: Vec<ReasonRow>,
    /// Hard and soft failures per bucket, every bucket of the period.
    pub series: Vec<SeriesPoint>,
    /// Top recipient domains.
    pub domains: Vec<GroupRow>,
    /// Top remote MTAs.
    pub mtas: Vec<GroupRow>,
    /// Reasons seen in the period and never before.
    pub new_reasons: Vec<Named>,
    /// Recipient domains seen in the period and never before.
    pub new_domains: Vec<Named>,
    /// Remote MTAs seen in the period and never before.
    pub new_mtas: Vec<Named>,
    /// Addresses that hard-bounced in the period and whose latest event is that hard bounce.
    pub suppression: Listing<SuppressRow>,
    /// SPF.
    pub spf: SpfSection,
    /// Incoming feedback reports.
    pub incoming: IncomingSection,
    /// Bounces waiting for a label (bounced in the period).
    pub labelling: Listing<QueueRow>,
}
