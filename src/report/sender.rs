//! The report sender: claims due reports from the outbox, delivers each to the configured relay with
//! lettre, records every attempt, and retries temporary failures with exponential backoff (1 min,
//! 2 min, 4 min, ... capped at 6 h, with jitter) until `max_attempts`. A report claimed by a sender that
//! died is claimed again when its lease runs out, so nothing is lost across restarts; a report is marked
//! sent only after the relay accepted it. The kill switch (`enabled = false`) stops delivery at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use lettre::address::Envelope;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::config::{ReportConfigError, SmtpConfig};
use crate::metrics::{self, ReportEvent};
use crate::store::Store;
use crate::store::spf::{AttemptOutcome, ClaimedReport};

/// Reports claimed at once: one, so that the lease covers a single delivery and a report claimed by a
/// sender that died (kill -9) is due again within one [`lease`].
const CLAIM: i64 = 1;
/// First retry delay; doubled per attempt.
const BACKOFF_BASE: Duration = Duration::from_secs(60);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(6 * 3600);
/// One delivery attempt may take this many `[smtp] timeout_secs` in all (fewer than the 8 of [`lease`], so
/// a live sender is never overtaken). lettre's async transport bounds only the TCP connect; a relay that
/// accepts the connection and then says nothing (or stalls after the data) would otherwise hold the
/// sender, and with it the whole outbox, forever.
const ATTEMPT_STEPS: u32 = 5;

/// Delivers the outbox.
pub struct Sender {
    store: Store,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Address,
    max_attempts: u32,
    worker: String,
    enabled: Arc<AtomicBool>,
    idle: Duration,
    attempt_limit: Duration,
    lease: Duration,
    only_kind: Option<&'static str>,
}

/// The sender could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    /// Bad `[smtp]` or `[report.spf]` values.
    #[error(transparent)]
    Config(#[from] ReportConfigError),
    /// `from_address` is not an address.
    #[error("[report.spf] from_address {0:?} is not a valid address")]
    From(String),
}

impl Sender {
    /// A sender through `smtp` with envelope sender `from_address` (so bounces of reports come back to
    /// rebound and suppress the address). `enabled` is the kill switch, shared with whoever flips it.
    pub fn new(
        store: Store,
        smtp: &SmtpConfig,
        from_address: &str,
        max_attempts: u32,
        enabled: Arc<AtomicBool>,
    ) -> Result<Sender, SenderError> {
        smtp.validate()?;
        let (host, port) = smtp.relay()?;
        let from: Address = from_address.parse().map_err(|_| SenderError::From(from_address.to_string()))?;
        let step = Duration::from_secs(smtp.timeout_secs.max(1));
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host).port(port).timeout(Some(step)).build();
        let worker = format!("{}:{}", crate::spf::config::host_name(), std::process::id());
        Ok(Sender {
            store,
            transport,
            from,
            max_attempts: max_attempts.max(1),
            worker,
            enabled,
            idle: Duration::from_secs(1),
            attempt_limit: step * ATTEMPT_STEPS,
            lease: lease(smtp.timeout_secs),
            only_kind: None,
        })
    }

    /// How long to wait when nothing is due (default 1 s).
    pub fn with_idle(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// Deliver only reports of `kind` (e.g. `serve` delivering mailed digests while SPF reports are off,
    /// so that queued SPF reports stay behind the kill switch).
    pub fn only_kind(mut self, kind: &'static str) -> Self {
        self.only_kind = Some(kind);
        self
    }

    /// Runs until `shutdown` completes.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        self.update_depth().await;
        loop {
            let worked = if self.enabled.load(Ordering::SeqCst) { self.round().await } else { 0 };
            if worked == 0 {
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(self.idle) => {}
                }
            }
        }
    }

    /// Claims and delivers one batch; returns how many reports were attempted.
    pub async fn round(&self) -> usize {
        let claimed = match self.store.claim_reports(&self.worker, self.only_kind, CLAIM, self.lease).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("spf reports: cannot claim: {e}");
                return 0;
            }
        };
        let n = claimed.len();
        for report in claimed {
            if !self.enabled.load(Ordering::SeqCst) {
                break;
            }
            self.deliver(report).await;
        }
        if n > 0 {
            self.update_depth().await;
        }
        n
    }

    /// Sets the queue-depth gauge from the outbox.
    async fn update_depth(&self) {
        match self.store.outbox_depth().await {
            Ok(depth) => metrics::set_queue_depth(depth),
            Err(e) => tracing::warn!("spf reports: {e}"),
        }
    }

    /// Delivers one claimed report and records the attempt; returns how it ended.
    pub async fn deliver(&self, report: ClaimedReport) -> AttemptOutcome {
        let started = Instant::now();
        let result = match report.address.parse::<Address>() {
            Ok(to) => match Envelope::new(Some(self.from.clone()), vec![to]) {
                Ok(envelope) => {
                    match tokio::time::timeout(self.attempt_limit, self.transport.send_raw(&envelope, &report.message)).await {
                        Ok(sent) => sent.map(|_| ()).map_err(Failure::Smtp),
                        Err(_) => Err(Failure::Timeout),
                    }
                }
                Err(e) => Err(Failure::Address(e.to_string())),
            },
            Err(e) => Err(Failure::Address(e.to_string())),
        };
        let ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let attempts = report.attempts + 1;
        let (outcome, code, detail, retry_at) = match result {
            Ok(()) => (AttemptOutcome::Sent, Some(250), "accepted by the relay".to_string(), None),
            Err(Failure::Address(e)) => (AttemptOutcome::Permanent, None, format!("bad address: {e}"), None),
            Err(Failure::Timeout) => {
                let detail = format!("the relay did not finish within {} s", self.attempt_limit.as_secs());
                if attempts >= i64::from(self.max_attempts) {
                    (AttemptOutcome::Permanent, None, detail, None)
                } else {
                    (AttemptOutcome::Temporary, None, detail, Some(Utc::now() + backoff(attempts)))
                }
            }
            Err(Failure::Smtp(e)) => {
                let code = e.status().map(|c| i64::from(u16::from(c)));
                let detail = e.to_string();
                if recipient_refused(&e) || attempts >= i64::from(self.max_attempts) {
                    (AttemptOutcome::Permanent, code, detail, None)
                } else {
                    (AttemptOutcome::Temporary, code, detail, Some(Utc::now() + backoff(attempts)))
                }
            }
        };
        if let Err(e) = self.store.record_report_attempt(report.id, outcome, code, &detail, ms, retry_at).await {
            // The lease runs out and the report is tried again: it may go twice, but it is not lost.
            tracing::error!("spf report {}: attempt not recorded: {e}", report.id);
        }
        match outcome {
            AttemptOutcome::Sent => metrics::report(ReportEvent::Sent),
            AttemptOutcome::Permanent => metrics::report(ReportEvent::Failed),
            AttemptOutcome::Temporary => {}
        }
        outcome
    }
}

enum Failure {
    Smtp(lettre::transport::smtp::Error),
    Address(String),
    /// The attempt took longer than `attempt_limit`.
    Timeout,
}

/// Whether the relay refused the report for good: a 5xx about the recipient, that is an RFC 3463 `5.1.x`
/// (address) or `5.2.x` (mailbox) status, or 550/551/553 with no enhanced code or an undefined `5.0.x`
/// one. Any other 5xx is the relay refusing us (no service, relaying denied, a protocol error) and, like a
/// 4xx, is retried until `max_attempts`, so a relay's misconfiguration does not lose the reports queued
/// meanwhile.
fn recipient_refused(e: &lettre::transport::smtp::Error) -> bool {
    if !e.is_permanent() {
        return false;
    }
    // lettre's text: "permanent error (550): 5.1.1 no such user".
    let text = e.to_string();
    let reply = text.split_once("): ").map_or("", |(_, r)| r);
    let subject = reply.split_whitespace().next().and_then(|w| w.strip_prefix("5.")).filter(|r| r.contains('.'));
    match subject.and_then(|r| r.split('.').next()) {
        Some("1" | "2") => true,
        Some("0") | None => e.status().is_some_and(|c| matches!(u16::from(c), 550 | 551 | 553)),
        Some(_) => false,
    }
}

/// How long a claim holds before another sender may take the report: longer than one delivery can
/// last (connect, greeting, EHLO, MAIL, RCPT, DATA and the final dot, each bounded by `timeout_secs`),
/// so a live sender is never overtaken, and short enough that a dead sender's report goes out soon.
pub fn lease(timeout_secs: u64) -> Duration {
    Duration::from_secs(timeout_secs.max(1) * 8 + 10)
}

/// The delay before attempt `attempts + 1`: 1 min × 2^(attempts-1), at most 6 h, ±10 % jitter.
fn backoff(attempts: i64) -> chrono::Duration {
    let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    let base = BACKOFF_BASE.saturating_mul(2u32.saturating_pow(exp)).min(BACKOFF_MAX);
    let jitter = 0.9 + rand::random::<f64>() * 0.2;
    chrono::Duration::from_std(base.mul_f64(jitter)).unwrap_or(chrono::Duration::hours(6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let secs = |a| backoff(a).num_seconds();
        assert!((54..=66).contains(&secs(1)));
        assert!((108..=132).contains(&secs(2)));
        assert!(secs(30) <= 6 * 3600 + 3600);
    }
}
