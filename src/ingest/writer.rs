//! The group-commit writer: one task owns the database writes of every source. Sessions send a message
//! with a reply channel; the task gathers up to `max_batch` messages that arrive within `commit_delay` of the
//! first, commits them in one transaction ([`Store::save_messages`]) and then answers each sender.
//!
//! One transaction per batch instead of one per message is what lets a disk-bound SQLite take thousands of
//! messages per second from concurrent LMTP sessions, while no reply is sent before the commit.
//!
//! The wait is adaptive: a source announces a message it is about to send ([`Writer::incoming`], e.g. an
//! LMTP session from MAIL on). While such announced messages are outstanding the writer keeps the batch open
//! (never longer than `commit_delay`); when none is, it commits at once, so a lone sender pays no delay.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::store::{NewMessage, SaveOutcome, Store, StoreError};

/// Why a message was not stored. Nothing was acknowledged; the source should report a temporary failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The database refused or failed the transaction (shared by every message of the batch).
    #[error("cannot store the message: {0}")]
    Store(#[source] Arc<StoreError>),
    /// The store answered with a different number of outcomes than messages.
    #[error("cannot store the message: the store returned {got} outcomes for {sent} messages")]
    OutcomeCount {
        /// Messages in the batch.
        sent: usize,
        /// Outcomes returned.
        got: usize,
    },
    /// The writer task has stopped (the process is shutting down).
    #[error("cannot store the message: the database writer has stopped")]
    Stopped,
}

type Reply = oneshot::Sender<Result<SaveOutcome, WriteError>>;

/// A handle to the writer task; clone it for every session. The task ends when every handle is dropped,
/// after committing what it was sent.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<(NewMessage, Reply)>,
    incoming: Arc<AtomicUsize>,
}

/// An announced message: while it lives, the writer holds a batch open for it (at most `commit_delay`).
/// Drop it once the message is submitted or abandoned.
pub struct Incoming(Arc<AtomicUsize>);

impl Drop for Incoming {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A message handed to the writer; await [`Pending::outcome`] for its commit.
pub struct Pending(oneshot::Receiver<Result<SaveOutcome, WriteError>>);

impl Pending {
    /// Wait until the message is committed (or failed).
    pub async fn outcome(self) -> Result<SaveOutcome, WriteError> {
        self.0.await.unwrap_or(Err(WriteError::Stopped))
    }
}

impl Writer {
    /// Start the writer task on the current runtime.
    pub fn spawn(store: Store, max_batch: usize, commit_delay: Duration) -> (Writer, JoinHandle<()>) {
        let max_batch = max_batch.max(1);
        let (tx, rx) = mpsc::channel(max_batch * 4);
        let incoming = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(run(store, rx, incoming.clone(), max_batch, commit_delay));
        (Writer { tx, incoming }, task)
    }

    /// Announce a message that will be submitted soon.
    pub fn incoming(&self) -> Incoming {
        self.incoming.fetch_add(1, Ordering::AcqRel);
        Incoming(self.incoming.clone())
    }

    /// Queue a message; waits only when the queue is full.
    pub async fn submit(&self, message: NewMessage) -> Result<Pending, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send((message, reply)).await.map_err(|_| WriteError::Stopped)?;
        Ok(Pending(rx))
    }

    /// Queue a message and wait for its commit.
    pub async fn save(&self, message: NewMessage) -> Result<SaveOutcome, WriteError> {
        self.submit(message).await?.outcome().await
    }
}

async fn run(
    store: Store,
    mut rx: mpsc::Receiver<(NewMessage, Reply)>,
    incoming: Arc<AtomicUsize>,
    max_batch: usize,
    commit_delay: Duration,
) {
    let mut messages = Vec::with_capacity(max_batch);
    let mut replies = Vec::with_capacity(max_batch);
    let mut stats = Stats::default();
    while let Some((message, reply)) = rx.recv().await {
        messages.push(message);
        replies.push(reply);
        let deadline = tokio::time::Instant::now() + commit_delay;
        while messages.len() < max_batch {
            let next = match rx.try_recv() {
                Ok(job) => Some(job),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty)
                    if commit_delay.is_zero() || incoming.load(Ordering::Acquire) == 0 =>
                {
                    None
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    tokio::time::timeout_at(deadline, rx.recv()).await.ok().flatten()
                }
            };
            match next {
                Some((message, reply)) => {
                    messages.push(message);
                    replies.push(reply);
                }
                None => break,
            }
        }
        stats.batches += 1;
        stats.messages += messages.len() as u64;
        let started = Instant::now();
        commit(&store, &mut messages, &mut replies).await;
        stats.commit_time += started.elapsed();
    }
    if stats.batches > 0 {
        tracing::info!(
            batches = stats.batches,
            messages = stats.messages,
            mean_batch = format!("{:.1}", stats.messages as f64 / stats.batches as f64),
            mean_commit_us = (stats.commit_time.as_micros() / u128::from(stats.batches)) as u64,
            "database writer stopped"
        );
    }
}

/// What the writer did, logged when it stops.
#[derive(Default)]
struct Stats {
    batches: u64,
    messages: u64,
    commit_time: Duration,
}

/// Commit one batch and answer every sender. (The store itself retries a batch refused for bad data one
/// message at a time, so one bad message never fails the others.)
async fn commit(store: &Store, messages: &mut Vec<NewMessage>, replies: &mut Vec<Reply>) {
    let started = Instant::now();
    let results: Vec<Result<SaveOutcome, WriteError>> = match save(store, messages).await {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(e) => {
            tracing::error!(error = %e, batch = messages.len(), "cannot store messages; answering with a temporary failure");
            (0..messages.len()).map(|_| Err(e.clone())).collect()
        }
    };
    tracing::debug!(batch = messages.len(), elapsed_us = started.elapsed().as_micros() as u64, "batch committed");
    for (reply, result) in replies.drain(..).zip(results) {
        // A sender that went away (connection lost) simply does not hear back; its message is stored and
        // a retry will be recognised as a duplicate.
        let _ = reply.send(result);
    }
    messages.clear();
}

async fn save(store: &Store, batch: &[NewMessage]) -> Result<Vec<SaveOutcome>, WriteError> {
    let outcomes = store.save_messages(batch).await.map_err(|e| WriteError::Store(Arc::new(e)))?;
    if outcomes.len() != batch.len() {
        return Err(WriteError::OutcomeCount { sent: batch.len(), got: outcomes.len() });
    }
    Ok(outcomes)
}
