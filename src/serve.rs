//! `rebound serve`: the long-running service. It opens (and migrates) the database, starts the group-commit
//! writer and the LMTP listener, and shuts them down in order on SIGTERM or SIGINT.
//!
//! Order matters for a clean shutdown: the signal handlers are installed before anything is bound (a signal
//! that arrives while the database is being opened is not lost, it ends the start-up), the listener stops
//! first, sessions finish their messages, and the writer commits what it was given before the process exits.

use std::net::SocketAddr;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::config::Config;
use crate::ingest::lmtp;
use crate::ingest::writer::Writer;
use crate::store::{Store, StoreError, redact_url};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The signal handlers could not be installed.
    #[error("cannot install the SIGTERM/SIGINT handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// The model of `[classify]` exists but cannot be loaded.
    #[error("cannot load the model: {0}")]
    Model(#[source] crate::classify::ModelError),
    /// The database could not be opened or migrated.
    #[error("cannot open database {url}: {source}")]
    Database {
        /// The URL, password removed.
        url: String,
        /// Why.
        source: StoreError,
    },
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
    crate::ingest::install_model(&config.classify).map_err(ServeError::Model)?;
    let url = &config.database.url;
    let store = tokio::select! {
        opened = Store::open(url) => opened.map_err(|source| ServeError::Database { url: redact_url(url), source })?,
        _ = shutdown.wait_for(|stop| *stop) => {
            tracing::info!("shut down before the database was open");
            return Ok(());
        }
    };
    tracing::info!(database = %redact_url(url), "database open");
    let (writer, writer_task) = Writer::spawn(store, config.ingest.max_batch, config.ingest.commit_delay);

    let lmtp = config.ingest.lmtp.clone();
    let listener = lmtp::bind(lmtp.listen).await.map_err(|source| ServeError::Bind { addr: lmtp.listen, source })?;
    let addr = listener.local_addr().unwrap_or(lmtp.listen);
    tracing::info!("LMTP listening on {addr}");
    lmtp::serve(listener, lmtp, writer, shutdown).await;

    // Every session (and with it every writer handle) is gone: the writer commits what it has and stops.
    if let Err(e) = writer_task.await {
        tracing::error!(error = %e, "the database writer failed");
    }
    tracing::info!("stopped");
    Ok(())
}
