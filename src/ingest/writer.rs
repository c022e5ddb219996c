//! The group-commit writer: one task owns the database writes of every source. Sessions send a message
//! with a reply channel; the task gathers up to `max_batch` messages that arrive within `commit_delay` of the
//! first, commits them in one transaction ([`Store::save_messages`]) and then answers each sender.
//!
//! One transaction per batch instead of one per message is what lets a disk-bound SQLite take thousands of
//! messages per second from concurrent LMTP sessions, while no reply is sent before the commit.
//!
//! The wait is bounded twice: by `commit_delay`, and by the number of sources that could still add to the
//! batch. A source that waits for each acknowledgement before sending on (an LMTP session) registers as a
//! [`Producer`]; it can have at most one message in a batch, so once every producer has one there, nothing
//! more can come and the batch is committed at once. A lone sender thus pays no delay, and eight concurrent
//! sessions share one commit.

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
    producers: Arc<AtomicUsize>,
}

/// A registered source that sends one message at a time and waits for its acknowledgement (an LMTP
/// session); unregisters when dropped.
pub struct Producer(Arc<AtomicUsize>);

impl Drop for Producer {
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
        let producers = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(run(store, rx, producers.clone(), max_batch, commit_delay));
        (Writer { tx, producers }, task)
    }

    /// Register a source that has at most one message in flight at a time.
    pub fn producer(&self) -> Producer {
        self.producers.fetch_add(1, Ordering::AcqRel);
        Producer(self.producers.clone())
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
    producers: Arc<AtomicUsize>,
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
                // Every producer has its message in this batch: nothing more can come.
                Err(mpsc::error::TryRecvError::Empty)
                    if commit_delay.is_zero() || messages.len() >= producers.load(Ordering::Acquire) =>
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
        Ok(outcomes) => {
            for (message, outcome) in messages.iter().zip(&outcomes) {
                if matches!(outcome, SaveOutcome::Stored { .. }) {
                    crate::metrics::record_parsed(&message.parsed, &message.classifications);
                }
            }
            outcomes.into_iter().map(Ok).collect()
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn writer(dir: &tempfile::TempDir, commit_delay: Duration) -> (Writer, JoinHandle<()>) {
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let store = Store::open(&url).await.unwrap();
        Writer::spawn(store, 64, commit_delay)
    }

    fn message(n: usize) -> NewMessage {
        let raw = format!("Subject: writer test {n}\r\n\r\nhello\r\n").into_bytes();
        crate::ingest::prepare(raw, "test".into(), None, Vec::new())
    }

    #[tokio::test]
    async fn a_lone_producer_is_committed_without_waiting_for_the_delay() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, task) = writer(&dir, Duration::from_secs(5)).await;
        let _only = writer.producer();
        let started = Instant::now();
        assert!(matches!(writer.save(message(1)).await, Ok(SaveOutcome::Stored { .. })));
        assert!(started.elapsed() < Duration::from_secs(2), "waited {:?}", started.elapsed());
        assert!(matches!(writer.save(message(1)).await, Ok(SaveOutcome::Duplicate { .. })));
        drop(writer);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_batch_waits_for_other_producers_but_not_beyond_the_delay() {
        let dir = tempfile::tempdir().unwrap();
        let delay = Duration::from_millis(300);
        let (writer, task) = writer(&dir, delay).await;
        let (_a, _b) = (writer.producer(), writer.producer());
        let started = Instant::now();
        assert!(writer.save(message(1)).await.is_ok());
        assert!(started.elapsed() >= delay, "committed after {:?}", started.elapsed());
        // Both producers' messages in one batch: the second arrival closes it at once.
        let started = Instant::now();
        let (x, y) = tokio::join!(writer.save(message(2)), writer.save(message(3)));
        assert!(x.is_ok() && y.is_ok());
        assert!(started.elapsed() < delay, "committed after {:?}", started.elapsed());
        drop(writer);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn messages_queued_after_the_last_handle_is_dropped_are_still_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, task) = writer(&dir, Duration::from_millis(2)).await;
        let pending: Vec<Pending> = {
            let mut v = Vec::new();
            for n in 0..10 {
                v.push(writer.submit(message(n)).await.unwrap());
            }
            v
        };
        drop(writer);
        for p in pending {
            assert!(matches!(p.outcome().await, Ok(SaveOutcome::Stored { .. })));
        }
        task.await.unwrap();
    }
}
