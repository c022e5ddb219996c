//! The background WAL checkpointer of a SQLite store.
//!
//! By default SQLite copies the WAL back into the database file (a checkpoint, two more fsyncs and a few
//! megabytes of writes) inside the `COMMIT` that crosses `wal_autocheckpoint` pages, so every few hundred
//! messages one batch waited for it before being acknowledged. The store's connections turn the automatic
//! checkpoint off and this task runs a `PASSIVE` checkpoint on its own connection every [`INTERVAL`],
//! beside the writer instead of in its commit: a commit then costs exactly one WAL fsync. Durability is
//! unchanged (`synchronous=FULL`: the commit is on disk in the WAL; the checkpoint only moves it).
//!
//! A passive checkpoint never waits for the writer, so under continuous load the WAL may not get back to
//! its start; once it holds [`RESTART_FRAMES`] frames, a `RESTART` checkpoint waits (up to the busy
//! timeout) for the writer to pause, so the WAL file stays bounded.

use std::time::Duration;

use sqlx::sqlite::SqlitePool;
use tokio::sync::watch;

/// How often the WAL is checkpointed.
const INTERVAL: Duration = Duration::from_millis(100);
/// WAL size in frames (pages, 4 KiB by default) from which a checkpoint waits for the writer to restart the WAL.
const RESTART_FRAMES: i64 = 16_384;

/// Handle on the checkpointer task: the task stops when [`Checkpointer::stop`] is called or the handle is
/// dropped (with the last clone of its store).
#[derive(Debug)]
pub(super) struct Checkpointer {
    stop: watch::Sender<bool>,
}

impl Checkpointer {
    /// Start checkpointing `pool`'s database on the current Tokio runtime; `None` outside a runtime (the
    /// caller then leaves SQLite's automatic checkpoint on).
    pub(super) fn spawn(pool: SqlitePool) -> Option<Checkpointer> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (stop, stopped) = watch::channel(false);
        runtime.spawn(run(pool, stopped));
        Some(Checkpointer { stop })
    }

    /// Stop the task (it finishes a checkpoint in progress first).
    pub(super) fn stop(&self) {
        self.stop.send_replace(true);
    }
}

async fn run(pool: SqlitePool, mut stopped: watch::Receiver<bool>) {
    let mut restart = false;
    loop {
        tokio::select! {
            // Stop asked, or every handle dropped.
            _ = stopped.wait_for(|stop| *stop) => break,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
        if pool.is_closed() {
            break;
        }
        let sql = if restart { "PRAGMA wal_checkpoint(RESTART)" } else { "PRAGMA wal_checkpoint(PASSIVE)" };
        match sqlx::query_as::<_, (i64, i64, i64)>(sql).fetch_one(&pool).await {
            // A WAL copied in full goes back to its start at the next commit; a long one still being
            // appended to needs a checkpoint that waits for the writer.
            Ok((_busy, frames, copied)) => restart = frames >= RESTART_FRAMES && copied < frames,
            Err(e) if pool.is_closed() => {
                tracing::debug!(error = %e, "WAL checkpointer stopped with its pool");
                break;
            }
            // Transient (a busy database, a full disk): the next round tries again; the WAL keeps every commit.
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use crate::store::Store;

    /// The store's commits leave the database file alone (no automatic checkpoint) and the background task
    /// moves them into it shortly after.
    #[tokio::test]
    async fn commits_reach_the_database_file_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.db");
        let store = Store::open(&format!("sqlite://{}", file.display())).await.unwrap();
        let autocheckpoint: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
            .fetch_one(store.sqlite_pool().unwrap())
            .await
            .unwrap();
        assert_eq!(autocheckpoint, 0, "commits must not checkpoint");
        let before = std::fs::metadata(&file).unwrap().len();
        let mut raw = b"Subject: checkpoint test\r\n\r\n".to_vec();
        raw.extend(std::iter::repeat_n(b'x', 512 * 1024));
        let message = crate::ingest::prepare(raw, "test".into(), None, Vec::new());
        store.save_messages(&[message]).await.unwrap();
        let started = Instant::now();
        while std::fs::metadata(&file).unwrap().len() < before + 512 * 1024 {
            assert!(started.elapsed().as_secs() < 10, "the WAL was not checkpointed into {}", file.display());
            tokio::time::sleep(super::INTERVAL).await;
        }
        store.close().await;
    }
}
