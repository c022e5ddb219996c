//! `rebound serve`: the long-running service. It loads the model, opens (and migrates) the database, starts
//! the SPF side when `[spf]` is configured (policy server, check writer, report sender: [`crate::spf::server`]),
//! the group-commit writer and the LMTP listener, and shuts them down in order on SIGTERM or SIGINT.
//!
//! Order matters for a clean shutdown: the signal handlers are installed before anything is bound (a signal
//! that arrives while the database is being opened is not lost, it ends the start-up), the listener stops
//! first, sessions finish their messages, and the writer commits what it was given before the process exits.

use std::net::SocketAddr;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::config::{AllowList, AllowListError, Config};
use crate::lifecycle;
use crate::ingest::lmtp;
use crate::ingest::writer::Writer;
use crate::spf::server::{self as spf_server, SpfSections};
use crate::store::{Store, StoreError, redact_url};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The signal handlers could not be installed.
    #[error("cannot install the SIGTERM/SIGINT handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// The model (the active database version, else the directory of `[classify]`) cannot be loaded.
    #[error("cannot load the model: {0}")]
    Model(#[source] crate::lifecycle::LifecycleError),
    /// The SPF side (policy server, report writer and sender) could not start.
    #[error("cannot start the SPF policy server: {0}")]
    Spf(#[source] crate::spf::server::StartError),
    /// Mailed digests (`[digest] to`) cannot be set up: a bad `from`, a DKIM key, the relay.
    #[error("cannot mail digests: {0}")]
    DigestMail(#[source] crate::digest::DigestError),
    /// The sender of mailed digests could not be set up.
    #[error("cannot start the sender of mailed digests: {0}")]
    DigestSender(#[source] crate::report::sender::SenderError),
    /// The metrics address could not be bound.
    #[error("cannot start the metrics server: {0}")]
    Metrics(#[source] crate::metrics::MetricsError),
    /// The database could not be opened or migrated.
    #[error("cannot open database {url}: {source}")]
    Database {
        /// The URL, password removed.
        url: String,
        /// Why.
        source: StoreError,
    },
    /// `[ingest.lmtp] allow_networks` has an entry that is not a network.
    #[error("invalid [ingest.lmtp] {0}")]
    AllowList(#[source] AllowListError),
    /// The LMTP address could not be bound.
    #[error("cannot listen for LMTP on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Install SIGTERM and SIGINT handlers; the returned receiver turns true at the first signal. Call this
/// before binding any socket.
pub fn shutdown_on_signals() -> Result<watch::Receiver<bool>, ServeError> {
    let mut term = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down: no new connections, finishing messages in flight");
        let _ = tx.send(true);
        // Keep the handlers installed so a second signal does not kill the process mid-commit.
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("already shutting down");
        }
    });
    Ok(rx)
}

/// Run the service until `shutdown` turns true; returns once every message in flight is answered (or the
/// grace period is over) and the writer has committed what it was given.
pub async fn run(config: Config, mut shutdown: watch::Receiver<bool>) -> Result<(), ServeError> {
    let allow = AllowList::parse(&config.ingest.lmtp.allow_networks).map_err(ServeError::AllowList)?;
    let url = &config.database.url;
    let store = tokio::select! {
        opened = Store::open(url) => opened.map_err(|source| ServeError::Database { url: redact_url(url), source })?,
        _ = shutdown.wait_for(|stop| *stop) => {
            tracing::info!("shut down before the database was open");
            return Ok(());
        }
    };
    tracing::info!(database = %redact_url(url), "database open");
    let database_error = |source| ServeError::Database { url: redact_url(url), source };
    lifecycle::sync_categories(&store, &config.classify.categories).await.map_err(database_error)?;
    let loaded = lifecycle::install_active(&store, &config.classify).await.map_err(|e| match e {
        lifecycle::LifecycleError::Store(source) => database_error(source),
        e => ServeError::Model(e),
    })?;
    let retrain_task = tokio::spawn(lifecycle::run_schedule(
        store.clone(),
        config.classify.clone(),
        retrain_options(config.classify.clone()),
        loaded,
        signalled(shutdown.clone()),
    ));
    let spf = match &config.spf {
        Some(spf) => {
            let sections = SpfSections { spf, report: &config.report.spf, dkim: &config.dkim, smtp: &config.smtp };
            Some(spf_server::start(sections, store.clone(), shutdown.clone()).await.map_err(ServeError::Spf)?)
        }
        None => {
            tracing::info!("no [spf] section: the SPF policy server is not started");
            None
        }
    };
    let metrics_task = match &config.metrics {
        Some(metrics) => {
            let listener = crate::metrics::bind(metrics).await.map_err(ServeError::Metrics)?;
            tracing::info!("metrics on http://{}/metrics and /healthz", metrics.listen);
            Some(tokio::spawn(crate::metrics::serve(listener, Some(store.clone()), signalled(shutdown.clone()))))
        }
        None => None,
    };
    let mailer = if config.digest.to.is_empty() {
        None
    } else {
        Some(
            crate::digest::mail::Mailer::from_config(&config.digest, &config.dkim, &config.report.spf.sign)
                .map_err(ServeError::DigestMail)?,
        )
    };
    // Mailed digests go through the report outbox: its sender runs with the SPF side when reports are on,
    // else here, for the digests alone (SPF reports left in the outbox stay there while reports are off).
    let digest_sender = match &mailer {
        Some(mailer) if !crate::digest::mail::report_sender_runs(&config) => {
            let enabled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
            let sender = crate::report::sender::Sender::new(
                store.clone(),
                &config.smtp,
                crate::digest::mail::envelope_sender(&config, mailer),
                config.report.spf.max_attempts,
                enabled,
            )
            .map_err(ServeError::DigestSender)?
            .only_kind(crate::digest::mail::KIND);
            Some(tokio::spawn(sender.run(signalled(shutdown.clone()))))
        }
        _ => None,
    };
    let digest_store = store.clone();
    let digest_config = config.digest.clone();
    let digest_shutdown = signalled(shutdown.clone());
    let digest_task = tokio::spawn(async move {
        if let Err(e) = crate::digest::schedule::run(digest_store, digest_config, mailer, digest_shutdown).await {
            tracing::error!(error = %e, "the digest schedule stopped");
        }
    });
    let (writer, writer_task) = Writer::spawn(store, config.ingest.max_batch, config.ingest.commit_delay);

    let lmtp = config.ingest.lmtp.clone();
    let listener = lmtp::bind(lmtp.listen).await.map_err(|source| ServeError::Bind { addr: lmtp.listen, source })?;
    let addr = listener.local_addr().unwrap_or(lmtp.listen);
    tracing::info!("LMTP listening on {addr}");
    lmtp::serve(listener, lmtp, allow, writer, shutdown).await;

    // Every session (and with it every writer handle) is gone: the writer commits what it has and stops.
    if let Err(e) = writer_task.await {
        tracing::error!(error = %e, "the database writer failed");
    }
    // The SPF side saw the same signal; its writer stops once the policy server has.
    let deadline = tokio::time::Instant::now() + config.ingest.lmtp.shutdown_grace;
    for task in spf.map(|running| running.tasks).unwrap_or_default() {
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "an SPF task failed"),
            Err(_) => tracing::warn!("an SPF task did not stop within the shutdown grace"),
        }
    }
    for task in [Some(digest_task), digest_sender, metrics_task].into_iter().flatten() {
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            tracing::warn!("the digest schedule, its sender or the metrics server did not stop within the shutdown grace");
        }
    }
    // A retraining in progress is abandoned (nothing is recorded before it ends).
    retrain_task.abort();
    tracing::info!("stopped");
    Ok(())
}

/// What each scheduled retraining starts from: `[classify] train_corpus`, read afresh, and the default
/// hyper-parameters (fixed seed).
fn retrain_options(
    classify: crate::config::ClassifyConfig,
) -> impl Fn() -> Result<lifecycle::RetrainOptions, lifecycle::LifecycleError> {
    move || {
        Ok(lifecycle::RetrainOptions {
            base: lifecycle::base_examples(&classify.train_corpus, None, false)?,
            base_name: classify.train_corpus.display().to_string(),
            train: crate::classify::train::TrainConfig::default(),
            classify: classify.clone(),
            min_new_labels: classify.min_new_labels,
        })
    }
}

/// A future that resolves once `shutdown` turns true (or its sender is gone).
async fn signalled(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
