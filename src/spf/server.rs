//! Starting the SPF side of `rebound serve` in one call: the policy server on `[spf] listen`, the
//! writer of `spf_checks` (and of the report outbox), and, when `[report.spf] enabled`, the report
//! sender. Everything that can be wrong in the configuration (addresses, networks, a DKIM key that is
//! missing or unreadable, the relay) is an error here, before anything listens.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::config::{SpfConfig, SpfConfigError};
use super::dns::{DnsConfigError, DnsResolver};
use super::policy::{IDLE_TIMEOUT, PolicyService, PolicySettings};
use super::Verifier;
use crate::report::config::{ReportConfigError, ReportSpfConfig, SmtpConfig};
use crate::report::dkim::{DkimError, DkimKey, DkimKeyConfig};
use crate::report::queue::{Reporter, run_writer};
use crate::report::sender::{Sender, SenderError};
use crate::store::Store;

/// The configuration sections the SPF side reads.
#[derive(Debug, Clone, Copy)]
pub struct SpfSections<'a> {
    /// `[spf]`.
    pub spf: &'a SpfConfig,
    /// `[report.spf]`.
    pub report: &'a ReportSpfConfig,
    /// `[dkim.NAME]` sections.
    pub dkim: &'a BTreeMap<String, DkimKeyConfig>,
    /// `[smtp]`.
    pub smtp: &'a SmtpConfig,
}

/// Why the SPF side did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `[spf]`.
    #[error(transparent)]
    Spf(#[from] SpfConfigError),
    /// `[report.spf]` or `[smtp]`.
    #[error(transparent)]
    Report(#[from] ReportConfigError),
    /// A key named in `sign` has no `[dkim.NAME]` section.
    #[error("[report.spf] sign names DKIM key {0:?}, but there is no [dkim.{0}] section")]
    UnknownKey(String),
    /// A key could not be loaded.
    #[error(transparent)]
    Dkim(#[from] DkimError),
    /// The resolver.
    #[error(transparent)]
    Dns(#[from] DnsConfigError),
    /// The sender.
    #[error(transparent)]
    Sender(#[from] SenderError),
    /// The listener.
    #[error("cannot listen on {addr} for the SPF policy server: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The running SPF side.
#[derive(Debug)]
pub struct Running {
    /// Where the policy server listens.
    pub policy_addr: SocketAddr,
    /// The reports kill switch (false: nothing more is sent).
    pub reports_enabled: Arc<AtomicBool>,
    /// The tasks; they end when the shutdown signal is sent (the writer once the policy server stopped).
    pub tasks: Vec<JoinHandle<()>>,
}

/// Starts the policy server, the check writer and the report sender. `shutdown` going `true` stops them.
pub async fn start(sections: SpfSections<'_>, store: Store, shutdown: watch::Receiver<bool>) -> Result<Running, StartError> {
    let spf = sections.spf;
    spf.validate()?;
    sections.report.validate()?;
    let reporter = if sections.report.enabled {
        sections.smtp.validate()?;
        let mut keys = Vec::new();
        for name in &sections.report.sign {
            let config = sections.dkim.get(name).ok_or_else(|| StartError::UnknownKey(name.clone()))?;
            keys.push(DkimKey::load(config)?);
        }
        Some(Arc::new(Reporter::new(sections.report.clone(), keys, spf.auth_serv_id())?))
    } else {
        None
    };
    let resolver = DnsResolver::new(&spf.dns_options()?)?;
    let settings = PolicySettings {
        helo: spf.helo,
        mail_from: spf.mail_from,
        auth_serv_id: spf.auth_serv_id(),
        trusted: spf.trusted()?,
    };
    let addr = spf.listen_addr()?;
    let allow = spf.allowed()?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the SPF policy server is listening on a non-loopback address and has no \
                               authentication; set [spf] allow_networks or restrict access with a firewall");
    }
    let policy_addr = listener.local_addr().map_err(|source| StartError::Bind { addr, source })?;

    let (events, rx) = mpsc::channel(10_000);
    let service = Arc::new(
        PolicyService::new(Verifier::new(resolver, spf.auth_serv_id()), settings, Some(events))
            .with_allowed(allow)
            .with_answer_after_store(spf.answer_after_store)
            .with_timeouts(IDLE_TIMEOUT, spf.request_timeout()?),
    );
    let mut tasks = vec![
        tokio::spawn(run_writer(store.clone(), rx, reporter.clone())),
        tokio::spawn(service.serve(listener, stopped(shutdown.clone()))),
    ];
    let reports_enabled = Arc::new(AtomicBool::new(sections.report.enabled));
    if reporter.is_some() {
        let sender = Sender::new(
            store,
            sections.smtp,
            &sections.report.from_address,
            sections.report.max_attempts,
            reports_enabled.clone(),
        )?;
        tasks.push(tokio::spawn(sender.run(stopped(shutdown))));
    }
    tracing::info!("spf policy server listening on {policy_addr}");
    Ok(Running { policy_addr, reports_enabled, tasks })
}

/// Completes when `shutdown` turns true (or its sender is gone).
async fn stopped(mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}
