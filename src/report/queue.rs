//! From a finished policy check to the database: the `spf_checks` rows of every check, and, for a MAIL
//! FROM check that the domain asked reports for and that passes every safety rule, the signed report
//! in the outbox, in the same transaction ([`run_writer`]). Checks that arrive together are written in
//! one transaction (group commit), so a burst costs one commit, not one per check.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::arf::{self, FailureReport};
use super::config::{Rate, ReportConfigError, ReportSpfConfig};
use super::dkim::{DkimError, DkimKey};
use super::{Planned, plan};
use crate::metrics::{self, ReportEvent};
use crate::spf::config::Network;
use crate::spf::policy::CheckEvent;
use crate::spf::{Identity, IdentityCheck};
use crate::store::Store;
use crate::store::spf::{CheckItem, Queued, ReportToQueue, SpfCheckRow};

/// Checks written per transaction at most.
const BATCH: usize = 256;

/// Builds and signs reports under one `[report.spf]` configuration.
#[derive(Debug)]
pub struct Reporter {
    config: ReportSpfConfig,
    rate: Rate,
    own_networks: Vec<Network>,
    keys: Vec<DkimKey>,
    reporting_mta: String,
}

impl Reporter {
    /// A reporter; `keys` are the loaded `[dkim.NAME]` keys named in `sign`.
    pub fn new(config: ReportSpfConfig, keys: Vec<DkimKey>, reporting_mta: String) -> Result<Reporter, ReportConfigError> {
        config.validate()?;
        let rate = config.rate()?;
        let own_networks = config.own_networks()?;
        Ok(Reporter { config, rate, own_networks, keys, reporting_mta })
    }

    /// The configuration.
    pub fn config(&self) -> &ReportSpfConfig {
        &self.config
    }

    /// The outbox entry for a failed check of either identity, if the rules allow one (rate limits
    /// and suppression are decided by the store, in the transaction).
    fn draft(&self, event: &CheckEvent, row: usize, check: &IdentityCheck) -> Option<(Planned, ReportToQueue)> {
        let sample = rand::random::<u8>() % 100;
        let planned = plan(check, event.client_ip, &self.config, &self.own_networks, sample).ok()?;
        let entry = ReportToQueue {
            row,
            kind: "spf-failure",
            domain: planned.request.domain.clone(),
            address: planned.request.address.clone(),
            mail_from: event.mail_from.clone(),
            message: Vec::new(),
            per_address: self.rate.count,
            period: self.rate.period,
            max_per_hour: self.config.max_per_hour,
        };
        Some((planned, entry))
    }

    /// The signed report message.
    pub fn message(&self, event: &CheckEvent, check: &IdentityCheck, to: &str) -> Result<Vec<u8>, DkimError> {
        let rcpts: Vec<String> = if event.recipient.is_empty() { vec![] } else { vec![event.recipient.clone()] };
        let headers = vec![event.received_spf.clone(), event.authentication_results.clone()];
        let ar = event.authentication_results.strip_prefix("Authentication-Results: ").unwrap_or(&event.authentication_results);
        let mechanism = check.outcome.decision.as_ref().map_or("(none)", |d| d.mechanism.as_str());
        let ar = format!("{ar} (mechanism {mechanism})");
        let report = FailureReport {
            reporting_mta: &self.reporting_mta,
            arrival: event.at,
            source_ip: event.client_ip,
            original_mail_from: &event.mail_from,
            original_rcpt_to: &rcpts,
            check,
            rejected: event.action.starts_with('5') || event.action.starts_with('4'),
            headers: &headers,
            authentication_results: &ar,
        };
        let mut message = arf::build(&report, &self.config.from_name, &self.config.from_address, to, &self.config.subject);
        for key in &self.keys {
            message = key.sign(&message)?;
        }
        Ok(message)
    }
}

/// The `spf_checks` rows of an event, and the index of the MAIL FROM row.
pub fn rows(event: &CheckEvent) -> (Vec<SpfCheckRow>, Option<usize>) {
    let mut rows = Vec::new();
    let mut mail_from_row = None;
    for check in event.verdict.helo.iter().chain(event.verdict.mail_from.iter()) {
        if check.identity == Identity::MailFrom {
            mail_from_row = Some(rows.len());
        }
        let decision = check.outcome.decision.as_ref();
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        rows.push(SpfCheckRow {
            checked_at: event.at,
            client_ip: event.client_ip.to_canonical().to_string(),
            client_name: None,
            helo: opt(&event.helo),
            mail_from: opt(&event.mail_from),
            rcpt_to: opt(&event.recipient),
            queue_id: opt(&event.queue_id),
            identity: match check.identity {
                Identity::Helo => "helo",
                Identity::MailFrom => "mail_from",
            },
            domain: check.outcome.domain.clone(),
            result: check.result().as_str(),
            explanation: check.outcome.explanation.clone().or_else(|| check.outcome.problem.clone()),
            record: decision.map(|d| d.record.clone()),
            mechanism: decision.map(|d| d.mechanism.clone()),
            action: Some(event.action.clone()),
        });
    }
    (rows, mail_from_row)
}

/// Writes every check received on `events` to `store` (with its reports when `reporter` plans some)
/// until the channel closes. A failed write is retried with a growing pause before the batch is given up.
pub async fn run_writer(store: Store, mut events: mpsc::Receiver<CheckEvent>, reporter: Option<Arc<Reporter>>) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = events.recv().await {
        batch.clear();
        batch.push(first);
        while batch.len() < BATCH {
            match events.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let mut shares = Shares::default();
        let mut items = Vec::with_capacity(batch.len());
        for event in &batch {
            items.push(item(&store, event, reporter.as_deref(), &mut shares).await);
        }
        let mut pause = Duration::from_millis(100);
        for attempt in 1..=5 {
            match store.save_spf_checks(&items).await {
                Ok(results) => {
                    for queued in results.iter().flat_map(|(_, q)| q) {
                        match queued {
                            Queued::Queued(id) => {
                                tracing::info!(report_id = id, "spf report queued");
                                metrics::report(ReportEvent::Queued);
                            }
                            _ => metrics::report(ReportEvent::Suppressed),
                        }
                    }
                    if let Ok(depth) = store.outbox_depth().await {
                        metrics::set_queue_depth(depth);
                    }
                    break;
                }
                Err(e) if attempt < 5 && e.is_temporary() => {
                    tracing::warn!("spf checks not saved yet ({e}); retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => {
                    tracing::error!("spf checks lost: {e}");
                    break;
                }
            }
        }
    }
}

/// Per report address, in one batch: the reports the database says it had in the current window (read
/// once per batch) and those planned since. A flood for one domain costs one look-up per batch, and
/// builds and signs only as many reports as its rate can still let through.
#[derive(Default)]
struct Shares(HashMap<String, (i64, i64)>);

/// The check's rows and its reports: one for the MAIL FROM identity and one for the HELO identity
/// (RFC 6652 reports are about either), the HELO one only when it goes to another address.
async fn item(store: &Store, event: &CheckEvent, reporter: Option<&Reporter>, shares: &mut Shares) -> CheckItem {
    let (rows, mail_from_row) = rows(event);
    let mut item = CheckItem { rows, reports: Vec::new() };
    let Some(reporter) = reporter else { return item };
    let helo_row = event.verdict.helo.as_ref().map(|_| 0);
    let candidates = [(mail_from_row, event.verdict.mail_from.as_ref()), (helo_row, event.verdict.helo.as_ref())];
    for (row, check) in candidates {
        let (Some(row), Some(check)) = (row, check) else { continue };
        let Some((planned, mut entry)) = reporter.draft(event, row, check) else { continue };
        if item.reports.iter().any(|r| r.address.eq_ignore_ascii_case(&entry.address)) {
            continue;
        }
        let key = entry.address.to_ascii_lowercase();
        let (used, planned_here) = match shares.0.get(&key) {
            Some(share) => *share,
            None => match store.reports_used(&entry).await {
                Ok(used) => (used, 0),
                Err(e) => {
                    tracing::warn!("spf report to {}: cannot read its rate ({e}); deciding in the transaction", entry.address);
                    (0, 0)
                }
            },
        };
        shares.0.insert(key.clone(), (used, planned_here));
        // Building and signing is the expensive part: skip it when the address has had its share (the
        // entry goes on without a message, so the store counts it as rate-limited).
        if used + planned_here >= i64::from(entry.per_address) {
            item.reports.push(entry);
            continue;
        }
        match reporter.message(event, check, &planned.request.address) {
            Ok(message) => {
                entry.message = message;
                shares.0.insert(key, (used, planned_here + 1));
                item.reports.push(entry);
            }
            Err(e) => tracing::error!("spf report to {} not built: {e}", planned.request.address),
        }
    }
    item
}
