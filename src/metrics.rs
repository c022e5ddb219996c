//! Process metrics in the Prometheus text format (exposition format 0.0.4), and the tiny HTTP/1.1
//! server that serves them on a loopback port: `GET /metrics` and `GET /healthz`.
//!
//! The registry is global and lock-free: every counter is an atomic in a fixed array indexed by its label
//! values, whose vocabularies are fixed here (so no input can grow the number of series). Other modules call
//! the recording functions: [`ingested`], [`parse_failed`], [`record_parsed`], [`classified`], [`spf_result`],
//! [`report`], [`set_queue_depth`], [`observe_lmtp`], [`observe_policy`].

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::classify::{Classification, REASONS};
use crate::parse::{Kind, Parsed};
use crate::store::Store;

/// The `[metrics]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where to serve `/metrics` and `/healthz`; a loopback address (default `127.0.0.1:9925`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9925))
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: default_listen() }
    }
}

impl MetricsConfig {
    /// Refuse a non-loopback address: the endpoints have no authentication.
    pub fn validate(&self) -> Result<(), MetricsError> {
        if self.listen.ip().is_loopback() {
            Ok(())
        } else {
            Err(MetricsError::NotLoopback(self.listen))
        }
    }
}

/// Errors of the metrics server.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// `[metrics] listen` is not a loopback address.
    #[error("[metrics] listen = \"{0}\" is not a loopback address; metrics have no authentication, use 127.0.0.1 or [::1] and a reverse proxy")]
    NotLoopback(SocketAddr),
    /// The port could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Message kinds, in the order of the `ingested` counters.
const KINDS: [Kind; 5] = [Kind::Dsn, Kind::Bounce, Kind::Arf, Kind::Autoreply, Kind::Unparsed];

/// Why a message was kept as `unparsed` (the `cause` label of `rebound_parse_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseFailure {
    /// Zero bytes.
    Empty,
    /// Binary data, not a mail message.
    Binary,
    /// No header block.
    NoHeaders,
    /// A message, but no delivery status, feedback report, auto-reply or bounce text in it.
    NotAReport,
    /// Over the configured size limit (not parsed at all).
    TooLarge,
    /// The parser failed internally (a bug).
    Internal,
    /// Anything else.
    Other,
}

impl ParseFailure {
    const ALL: [ParseFailure; 7] = [
        ParseFailure::Empty,
        ParseFailure::Binary,
        ParseFailure::NoHeaders,
        ParseFailure::NotAReport,
        ParseFailure::TooLarge,
        ParseFailure::Internal,
        ParseFailure::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ParseFailure::Empty => "empty",
            ParseFailure::Binary => "binary",
            ParseFailure::NoHeaders => "no_headers",
            ParseFailure::NotAReport => "not_a_report",
            ParseFailure::TooLarge => "too_large",
            ParseFailure::Internal => "internal",
            ParseFailure::Other => "other",
        }
    }

    /// The cause of a `parse_error` text as `parse::parse` and ingest write them.
    pub fn from_error(error: &str) -> ParseFailure {
        let e = error.to_ascii_lowercase();
        if e.starts_with("empty message") {
            ParseFailure::Empty
        } else if e.starts_with("binary data") {
            ParseFailure::Binary
        } else if e.starts_with("no message headers") {
            ParseFailure::NoHeaders
        } else if e.starts_with("no delivery status") {
            ParseFailure::NotAReport
        } else if e.contains("size limit") || e.contains("too large") {
            ParseFailure::TooLarge
        } else if e.starts_with("internal error") {
            ParseFailure::Internal
        } else {
            ParseFailure::Other
        }
    }
}

/// SPF results (RFC 7208 section 2.6), in the order of the counters.
const SPF_RESULTS: [&str; 7] = ["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"];
/// SPF identities checked.
const SPF_IDENTITIES: [&str; 2] = ["helo", "mail_from"];

/// What happened to an outgoing report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportEvent {
    /// Written to the outbox.
    Queued,
    /// Accepted by the relay.
    Sent,
    /// Given up (permanent failure or out of retries).
    Failed,
    /// Not sent: rate limit, bounced report address, ...
    Suppressed,
}

impl ReportEvent {
    const ALL: [ReportEvent; 4] = [ReportEvent::Queued, ReportEvent::Sent, ReportEvent::Failed, ReportEvent::Suppressed];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportEvent::Queued => "queued",
            ReportEvent::Sent => "sent",
            ReportEvent::Failed => "failed",
            ReportEvent::Suppressed => "suppressed",
        }
    }
}

/// Confidence buckets of classifications.
const CONFIDENCE: [&str; 3] = ["low", "medium", "high"];
/// Upper bounds (seconds) of the latency histograms' buckets.
const LATENCY_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];
/// Reasons tracked by name; a user's custom category counts as `custom`.
const REASON_SLOTS: usize = REASONS.len() + 1;

/// A latency histogram with [`LATENCY_BUCKETS`] (non-cumulative counts; cumulated when rendered).
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of observations in nanoseconds.
    sum_nanos: AtomicU64,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram { buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKETS.len() + 1], sum_nanos: AtomicU64::new(0) }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// The global registry.
struct Registry {
    ingested: [AtomicU64; KINDS.len()],
    parse_failures: [AtomicU64; ParseFailure::ALL.len()],
    classifications: [[AtomicU64; CONFIDENCE.len()]; REASON_SLOTS],
    spf: [[AtomicU64; SPF_RESULTS.len()]; SPF_IDENTITIES.len()],
    reports: [AtomicU64; ReportEvent::ALL.len()],
    queue_depth: AtomicI64,
    lmtp: Histogram,
    policy: Histogram,
}

static REGISTRY: Registry = Registry {
    ingested: [const { AtomicU64::new(0) }; KINDS.len()],
    parse_failures: [const { AtomicU64::new(0) }; ParseFailure::ALL.len()],
    classifications: [const { [const { AtomicU64::new(0) }; CONFIDENCE.len()] }; REASON_SLOTS],
    spf: [const { [const { AtomicU64::new(0) }; SPF_RESULTS.len()] }; SPF_IDENTITIES.len()],
    reports: [const { AtomicU64::new(0) }; ReportEvent::ALL.len()],
    queue_depth: AtomicI64::new(0),
    lmtp: Histogram::new(),
    policy: Histogram::new(),
};

/// Count one stored message of `kind`.
pub fn ingested(kind: Kind) {
    let i = KINDS.iter().position(|k| *k == kind).unwrap_or(KINDS.len() - 1);
    REGISTRY.ingested[i].fetch_add(1, Ordering::Relaxed);
}

/// Count one message kept as `unparsed` because of `cause`.
pub fn parse_failed(cause: ParseFailure) {
    let i = ParseFailure::ALL.iter().position(|c| *c == cause).unwrap_or(ParseFailure::ALL.len() - 1);
    REGISTRY.parse_failures[i].fetch_add(1, Ordering::Relaxed);
}

/// Count one stored message and its classifications: [`ingested`], [`parse_failed`] when it is unparsed,
/// [`classified`] for each recipient.
pub fn record_parsed(parsed: &Parsed, classifications: &[Classification]) {
    ingested(parsed.kind);
    if parsed.kind == Kind::Unparsed {
        parse_failed(parsed.parse_error.as_deref().map_or(ParseFailure::Other, ParseFailure::from_error));
    }
    for c in classifications {
        classified(&c.reason, c.confidence);
    }
}

/// Count one classification by reason (custom categories count as `custom`) and confidence bucket
/// (`low` < 0.5 <= `medium` < 0.9 <= `high`, the bands of docs/sql.md).
pub fn classified(reason: &str, confidence: f32) {
    let r = REASONS.iter().position(|known| *known == reason).unwrap_or(REASONS.len());
    let c = if confidence >= 0.9 {
        2
    } else if confidence >= 0.5 {
        1
    } else {
        0
    };
    REGISTRY.classifications[r][c].fetch_add(1, Ordering::Relaxed);
}

/// Count one SPF result of an identity (`helo` or `mail_from`); unknown words are ignored (and logged).
pub fn spf_result(identity: &str, result: &str) {
    let (Some(i), Some(r)) =
        (SPF_IDENTITIES.iter().position(|x| *x == identity), SPF_RESULTS.iter().position(|x| *x == result))
    else {
        tracing::debug!(identity, result, "SPF result outside the metrics vocabulary");
        return;
    };
    REGISTRY.spf[i][r].fetch_add(1, Ordering::Relaxed);
}

/// Count one event of an outgoing report.
pub fn report(event: ReportEvent) {
    let i = ReportEvent::ALL.iter().position(|e| *e == event).unwrap_or(0);
    REGISTRY.reports[i].fetch_add(1, Ordering::Relaxed);
}

/// Set the number of reports waiting in the outbox.
pub fn set_queue_depth(depth: i64) {
    REGISTRY.queue_depth.store(depth, Ordering::Relaxed);
}

/// Record the time one LMTP transaction took (from DATA to the reply).
pub fn observe_lmtp(duration: Duration) {
    REGISTRY.lmtp.observe(duration);
}

/// Record the time one SPF policy request took (from the request to the answer).
pub fn observe_policy(duration: Duration) {
    REGISTRY.policy.observe(duration);
}

/// Every metric in the Prometheus text format.
pub fn render() -> String {
    let r = &REGISTRY;
    let mut out = String::with_capacity(8192);
    let counter = |out: &mut String, name: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    };
    counter(&mut out, "rebound_ingested_total", "Messages stored, by kind.");
    for (i, kind) in KINDS.iter().enumerate() {
        let _ = writeln!(out, "rebound_ingested_total{{kind=\"{}\"}} {}", kind.as_str(), r.ingested[i].load(Ordering::Relaxed));
    }
    counter(&mut out, "rebound_parse_failures_total", "Messages kept as unparsed, by cause.");
    for (i, cause) in ParseFailure::ALL.iter().enumerate() {
        let _ = writeln!(
            out,
            "rebound_parse_failures_total{{cause=\"{}\"}} {}",
            cause.as_str(),
            r.parse_failures[i].load(Ordering::Relaxed)
        );
    }
    counter(&mut out, "rebound_classifications_total", "Recipients classified, by reason and confidence bucket.");
    for (ri, row) in r.classifications.iter().enumerate() {
        let reason = REASONS.get(ri).copied().unwrap_or("custom");
        for (ci, bucket) in CONFIDENCE.iter().enumerate() {
            let n = row[ci].load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(out, "rebound_classifications_total{{reason=\"{reason}\",confidence=\"{bucket}\"}} {n}");
            }
        }
    }
    counter(&mut out, "rebound_spf_results_total", "SPF checks, by identity and result.");
    for (ii, identity) in SPF_IDENTITIES.iter().enumerate() {
        for (ri, result) in SPF_RESULTS.iter().enumerate() {
            let n = r.spf[ii][ri].load(Ordering::Relaxed);
            let _ = writeln!(out, "rebound_spf_results_total{{identity=\"{identity}\",result=\"{result}\"}} {n}");
        }
    }
    counter(&mut out, "rebound_reports_total", "Outgoing reports, by event (queued, sent, failed, suppressed).");
    for (i, event) in ReportEvent::ALL.iter().enumerate() {
        let _ = writeln!(out, "rebound_reports_total{{event=\"{}\"}} {}", event.as_str(), r.reports[i].load(Ordering::Relaxed));
    }
    let _ = writeln!(
        out,
        "# HELP rebound_report_queue_depth Reports waiting in the outbox.\n# TYPE rebound_report_queue_depth gauge\n\
         rebound_report_queue_depth {}",
        r.queue_depth.load(Ordering::Relaxed)
    );
    r.lmtp.render(&mut out, "rebound_lmtp_duration_seconds", "LMTP transactions, from DATA to the reply.");
    r.policy.render(&mut out, "rebound_policy_duration_seconds", "SPF policy requests, from request to answer.");
    out
}

/// Longest request head read.
const MAX_REQUEST: usize = 8192;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `/healthz` waits for the database.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Bind the metrics port (after checking it is loopback).
pub async fn bind(config: &MetricsConfig) -> Result<TcpListener, MetricsError> {
    config.validate()?;
    TcpListener::bind(config.listen).await.map_err(|source| MetricsError::Bind { addr: config.listen, source })
}

/// Serve `/metrics` and `/healthz` on `listener` until `shutdown` resolves. `/healthz` answers 200 when
/// `store` (if given) answers `SELECT 1` within 2 s, 503 otherwise.
pub async fn serve(listener: TcpListener, store: Option<Store>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let store = store.clone();
                    tokio::spawn(async move {
                        if let Err(e) = respond(stream, store.as_ref()).await {
                            tracing::debug!(error = %e, "metrics connection failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a metrics connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Read one request head and answer it, then close (HTTP/1.1 with `Connection: close`).
async fn respond(mut stream: TcpStream, store: Option<&Store>) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = tokio::time::timeout(REQUEST_TIMEOUT, async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if head.len() > MAX_REQUEST {
                return Ok(false);
            }
        }
    })
    .await;
    let (status, content_type, body) = match complete {
        Ok(Ok(true)) => route(&head, store).await,
        Ok(Ok(false)) | Err(_) => ("400 Bad Request", "text/plain; charset=utf-8", "bad request\n".to_string()),
        Ok(Err(e)) => return Err(e),
    };
    let is_head = head.starts_with(b"HEAD ");
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !is_head {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    // Read what the client may still be sending (an oversized head), so closing does not reset the
    // connection before it has read the answer.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut drained = 0;
        while drained < 64 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
    Ok(())
}

/// The status line, content type and body for a request head.
async fn route(head: &[u8], store: Option<&Store>) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", TEXT, "only GET and HEAD\n".to_string());
    }
    match path {
        "/metrics" => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", render()),
        "/healthz" => match store {
            None => ("200 OK", TEXT, "ok\n".to_string()),
            Some(store) => match tokio::time::timeout(HEALTH_TIMEOUT, ping(store)).await {
                Ok(Ok(())) => ("200 OK", TEXT, "ok\n".to_string()),
                Ok(Err(e)) => ("503 Service Unavailable", TEXT, format!("database: {e}\n")),
                Err(_) => ("503 Service Unavailable", TEXT, "database: no answer within 2 s\n".to_string()),
            },
        },
        _ => ("404 Not Found", TEXT, "not found: try /metrics or /healthz\n".to_string()),
    }
}

/// `SELECT 1` on the store's pool.
async fn ping(store: &Store) -> Result<(), sqlx::Error> {
    if let Some(pool) = store.sqlite_pool() {
        sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
    } else if let Some(pool) = store.postgres_pool() {
        sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_failure_causes_follow_the_parser_messages() {
        assert_eq!(ParseFailure::from_error("empty message"), ParseFailure::Empty);
        assert_eq!(ParseFailure::from_error("binary data, not a mail message"), ParseFailure::Binary);
        assert_eq!(ParseFailure::from_error("no message headers found"), ParseFailure::NoHeaders);
        assert_eq!(
            ParseFailure::from_error("no delivery status, feedback report, auto-reply or bounce text found"),
            ParseFailure::NotAReport
        );
        assert_eq!(ParseFailure::from_error("message over the size limit of 10 MiB"), ParseFailure::TooLarge);
        assert_eq!(ParseFailure::from_error("something odd"), ParseFailure::Other);
    }

    #[test]
    fn config_defaults_to_loopback_and_refuses_other_addresses() {
        let c: MetricsConfig = toml::from_str("").unwrap();
        assert_eq!(c.listen, "127.0.0.1:9925".parse().unwrap());
        c.validate().unwrap();
        let open: MetricsConfig = toml::from_str("listen = \"0.0.0.0:9925\"").unwrap();
        assert!(open.validate().is_err());
        assert!(toml::from_str::<MetricsConfig>("listen = \"[::1]:9925\"").unwrap().validate().is_ok());
        assert!(toml::from_str::<MetricsConfig>("port = 1").is_err());
    }
}
