//! What people teach the classifier: categories (built-in reasons and custom ones), labels confirming a
//! bounce's reason, and the classifier versions trained from them (`model_versions`, at most one active).
//!
//! A label replaces the bounce's verdict in `bounces` (`decided_by = 'user'`, confidence 1, hard/soft from the
//! category), so views such as `suppression_list` follow people's corrections at once; what was there before is
//! kept in the label row (`previous_*`), so the classifier's mistakes stay measurable.

use super::{Backend, Pool, Store, StoreError, StoreErrorKind};

/// A row of `categories`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Category {
    /// The reason or category name.
    pub name: String,
    /// One line on what it means.
    pub description: Option<String>,
    /// A bounce in this category means the address is dead.
    pub hard_bounce: bool,
    /// Part of the default taxonomy.
    pub builtin: bool,
}

/// A bounce with the reason a person confirmed (its latest label): one training example.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledBounce {
    /// `labels.id`.
    pub label_id: i64,
    /// `bounces.id`.
    pub bounce_id: i64,
    /// The confirmed reason or category.
    pub reason: String,
    /// The bounced recipient.
    pub recipient: String,
    /// The kind of its message (`dsn`, `bounce`, ...).
    pub kind: String,
    /// DSN Action.
    pub action: Option<String>,
    /// Enhanced status code.
    pub status: Option<String>,
    /// SMTP reply code.
    pub reply_code: Option<i64>,
    /// The diagnostic text.
    pub diagnostic: Option<String>,
    /// The SMTP command that failed.
    pub smtp_command: Option<String>,
    /// Remote-MTA.
    pub remote_mta: Option<String>,
    /// What the bounce said before this label.
    pub previous_reason: Option<String>,
}

/// A classifier version to record.
#[derive(Debug, Clone, Copy)]
pub struct NewModelVersion<'a> {
    /// What it was trained on (corpus, labels up to which id, ...).
    pub trained_on: &'a str,
    /// Evaluation figures, as JSON.
    pub metrics_json: &'a str,
    /// Where its weights are on disk, if there.
    pub path: Option<&'a str>,
    /// Or the weights themselves.
    pub weights: Option<&'a [u8]>,
}

/// A row of `model_versions`, without the weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelVersion {
    /// `model_versions.id`.
    pub id: i64,
    /// When it was recorded, `YYYY-MM-DD HH:MM:SS` UTC.
    pub created_at: String,
    /// What it was trained on.
    pub trained_on: String,
    /// Evaluation figures, as JSON.
    pub metrics_json: String,
    /// Where its weights are on disk.
    pub path: Option<String>,
    /// Whether the weights are stored in the row.
    pub has_weights: bool,
    /// The version in use.
    pub active: bool,
}

/// The retraining lock of [`Store::try_retrain_lock`]. Release it with [`RetrainLock::release`]; dropped
/// without that, its connection is closed, which ends the lock too.
pub struct RetrainLock {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
}

impl RetrainLock {
    /// Give the lock back (its connection returns to the pool).
    pub async fn release(mut self) -> Result<(), StoreError> {
        const SQL: &str = "SELECT pg_advisory_unlock(hashtext('rebound.model_retrain'), hashtext(current_schema()))";
        if let Some(mut conn) = self.conn.take() {
            let released: Result<bool, _> = sqlx::query_scalar(SQL).fetch_one(&mut *conn).await;
            if let Err(e) = released {
                conn.close_on_drop();
                return Err(StoreError::sqlx(Backend::Postgres, "cannot release the retraining lock", e));
            }
        }
        Ok(())
    }
}

impl Drop for RetrainLock {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.close_on_drop();
        }
    }
}

/// Run `$body` with `$pool` the store's pool and `$backend` its backend (the body compiles for both).
macro_rules! with_pool {
    ($store:expr, |$pool:ident, $backend:ident| $body:expr) => {
        match &$store.pool {
            Pool::Sqlite($pool) => {
                let $backend = Backend::Sqlite;
                $body
            }
            Pool::Postgres($pool) => {
                let $backend = Backend::Postgres;
                $body
            }
        }
    };
}

/// `created_at` as `YYYY-MM-DD HH:MM:SS` text on both backends.
fn created_at_text(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "created_at",
        Backend::Postgres => "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')",
    }
}

/// Whether a bounce's own signals say the failure is temporary (4xx, or a delayed DSN): such a bounce is
/// never hard, whatever its category.
fn transient(action: Option<&str>, status: Option<&str>, reply_code: Option<i64>) -> bool {
    action == Some("delayed")
        || status.is_some_and(|s| s.starts_with('4'))
        || reply_code.is_some_and(|c| (400..500).contains(&c))
}

impl Store {
    /// Every category, built-ins first, then by name.
    pub async fn categories(&self) -> Result<Vec<Category>, StoreError> {
        const SQL: &str = "SELECT name, description, hard_bounce, builtin FROM categories ORDER BY builtin DESC, name";
        let rows: Vec<(String, Option<String>, bool, bool)> = with_pool!(self, |pool, backend| {
            sqlx::query_as(SQL)
                .fetch_all(pool)
                .await
                .map_err(|e| StoreError::sqlx(backend, format!("cannot read categories from {}", self.display_url), e))
        })?;
        Ok(rows
            .into_iter()
            .map(|(name, description, hard_bounce, builtin)| Category { name, description, hard_bounce, builtin })
            .collect())
    }

    /// Add a custom category, or update its description and hard/soft flag. Built-in reasons are left as they
    /// are (the name is accepted and nothing changes).
    pub async fn upsert_category(&self, name: &str, description: Option<&str>, hard_bounce: bool) -> Result<(), StoreError> {
        let name = name.trim();
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(StoreError::new(
                StoreErrorKind::Data,
                format!("invalid category name {name:?}: use a non-empty word such as gmail-throttle"),
            ));
        }
        const SQL: &str = "INSERT INTO categories (name, description, hard_bounce, builtin) VALUES ($1, $2, $3, false) \
                           ON CONFLICT (name) DO UPDATE SET description = excluded.description, \
                           hard_bounce = excluded.hard_bounce WHERE NOT categories.builtin";
        with_pool!(self, |pool, backend| {
            sqlx::query(SQL).bind(name).bind(description).bind(hard_bounce).execute(pool).await.map(|_| ()).map_err(
                |e| StoreError::sqlx(backend, format!("cannot save category {name} in {}", self.display_url), e),
            )
        })
    }

    /// The current reason of bounce `id`, `None` when there is no such bounce.
    pub async fn bounce_reason(&self, id: i64) -> Result<Option<String>, StoreError> {
        const SQL: &str = "SELECT reason FROM bounces WHERE id = $1";
        with_pool!(self, |pool, backend| {
            sqlx::query_scalar(SQL).bind(id).fetch_optional(pool).await.map_err(|e| {
                StoreError::sqlx(backend, format!("cannot read bounce {id} from {}", self.display_url), e)
            })
        })
    }

    /// Confirm `reason` (a built-in reason or a category) for a bounce; returns the label's id.
    ///
    /// An unknown reason or bounce is a [`StoreErrorKind::Data`] error that names it.
    pub async fn add_label(&self, bounce_id: i64, reason: &str, labelled_by: &str) -> Result<i64, StoreError> {
        const CATEGORY: &str = "SELECT hard_bounce FROM categories WHERE name = $1";
        const BOUNCE: &str = "SELECT reason, confidence, decided_by, action, status, reply_code FROM bounces WHERE id = $1";
        const INSERT: &str = "INSERT INTO labels (bounce_id, reason, labelled_by, previous_reason, previous_confidence, \
                              previous_decided_by) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";
        const UPDATE: &str =
            "UPDATE bounces SET reason = $2, hard_bounce = $3, confidence = 1.0, decided_by = 'user' WHERE id = $1";
        type BounceRow = (String, f64, String, Option<String>, Option<String>, Option<i64>);
        let context = || format!("cannot label bounce {bounce_id} as {reason} in {}", self.display_url);
        with_pool!(self, |pool, backend| {
            let err = |e: sqlx::Error| StoreError::sqlx(backend, context(), e);
            let mut tx = pool.begin().await.map_err(err)?;
            let category: Option<bool> =
                sqlx::query_scalar(CATEGORY).bind(reason).fetch_optional(&mut *tx).await.map_err(err)?;
            let Some(category_hard) = category else {
                return Err(StoreError::new(
                    StoreErrorKind::Data,
                    format!("{}: unknown reason or category (declare custom categories first)", context()),
                ));
            };
            let bounce: Option<BounceRow> =
                sqlx::query_as(BOUNCE).bind(bounce_id).fetch_optional(&mut *tx).await.map_err(err)?;
            let Some((previous, confidence, decided_by, action, status, reply_code)) = bounce else {
                return Err(StoreError::new(StoreErrorKind::Data, format!("{}: no such bounce", context())));
            };
            let hard = category_hard && !transient(action.as_deref(), status.as_deref(), reply_code);
            let label_id: i64 = sqlx::query_scalar(INSERT)
                .bind(bounce_id)
                .bind(reason)
                .bind(labelled_by)
                .bind(&previous)
                .bind(confidence)
                .bind(&decided_by)
                .fetch_one(&mut *tx)
                .await
                .map_err(err)?;
            sqlx::query(UPDATE).bind(bounce_id).bind(reason).bind(hard).execute(&mut *tx).await.map_err(err)?;
            tx.commit().await.map_err(err)?;
            Ok(label_id)
        })
    }

    /// The latest label of every labelled bounce whose label id is above `after_label_id` (0 for all), in
    /// label order: the examples `model train --from-db` learns from.
    pub async fn labelled_bounces(&self, after_label_id: i64) -> Result<Vec<LabelledBounce>, StoreError> {
        const SQL: &str = "SELECT l.id, b.id, l.reason, b.recipient, m.kind, b.action, b.status, b.reply_code, \
                           b.diagnostic, b.smtp_command, b.remote_mta, l.previous_reason \
                           FROM labels l JOIN bounces b ON b.id = l.bounce_id JOIN messages m ON m.id = b.message_id \
                           WHERE l.id > $1 AND NOT EXISTS \
                               (SELECT 1 FROM labels n WHERE n.bounce_id = l.bounce_id AND n.id > l.id) \
                           ORDER BY l.id";
        type Row = (i64, i64, String, String, String, Option<String>, Option<String>, Option<i64>, Option<String>,
                    Option<String>, Option<String>, Option<String>);
        let rows: Vec<Row> = with_pool!(self, |pool, backend| {
            sqlx::query_as(SQL).bind(after_label_id).fetch_all(pool).await.map_err(|e| {
                StoreError::sqlx(backend, format!("cannot read labels from {}", self.display_url), e)
            })
        })?;
        Ok(rows
            .into_iter()
            .map(|r| LabelledBounce {
                label_id: r.0,
                bounce_id: r.1,
                reason: r.2,
                recipient: r.3,
                kind: r.4,
                action: r.5,
                status: r.6,
                reply_code: r.7,
                diagnostic: r.8,
                smtp_command: r.9,
                remote_mta: r.10,
                previous_reason: r.11,
            })
            .collect())
    }

    /// Record a trained classifier version; with `activate`, it becomes the only active one. Returns its id.
    pub async fn record_model_version(&self, version: NewModelVersion<'_>, activate: bool) -> Result<i64, StoreError> {
        const DEACTIVATE: &str = "UPDATE model_versions SET active = false WHERE active";
        const INSERT: &str = "INSERT INTO model_versions (trained_on, metrics, path, weights, active) \
                              VALUES ($1, $2, $3, $4, $5) RETURNING id";
        if version.path.is_none() && version.weights.is_none() {
            return Err(StoreError::new(StoreErrorKind::Data, "a model version needs a path or its weights"));
        }
        let context = || format!("cannot record a model version in {}", self.display_url);
        with_pool!(self, |pool, backend| {
            let err = |e: sqlx::Error| StoreError::sqlx(backend, context(), e);
            let mut tx = pool.begin().await.map_err(err)?;
            if activate {
                sqlx::query(DEACTIVATE).execute(&mut *tx).await.map_err(err)?;
            }
            let id: i64 = sqlx::query_scalar(INSERT)
                .bind(version.trained_on)
                .bind(version.metrics_json)
                .bind(version.path)
                .bind(version.weights)
                .bind(activate)
                .fetch_one(&mut *tx)
                .await
                .map_err(err)?;
            tx.commit().await.map_err(err)?;
            Ok(id)
        })
    }

    /// Make version `id` the only active one (promotion or rollback).
    pub async fn activate_model_version(&self, id: i64) -> Result<(), StoreError> {
        const DEACTIVATE: &str = "UPDATE model_versions SET active = false WHERE active AND id <> $1";
        const ACTIVATE: &str = "UPDATE model_versions SET active = true WHERE id = $1";
        let context = || format!("cannot activate model version {id} in {}", self.display_url);
        with_pool!(self, |pool, backend| {
            let err = |e: sqlx::Error| StoreError::sqlx(backend, context(), e);
            let mut tx = pool.begin().await.map_err(err)?;
            sqlx::query(DEACTIVATE).bind(id).execute(&mut *tx).await.map_err(err)?;
            let updated = sqlx::query(ACTIVATE).bind(id).execute(&mut *tx).await.map_err(err)?.rows_affected();
            if updated == 0 {
                return Err(StoreError::new(StoreErrorKind::Data, format!("{}: no such version", context())));
            }
            tx.commit().await.map_err(err)?;
            Ok(())
        })
    }

    /// Make no version active: the shipped model in `models/` is used again.
    pub async fn deactivate_model_versions(&self) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE model_versions SET active = false WHERE active";
        with_pool!(self, |pool, backend| {
            sqlx::query(SQL).execute(pool).await.map(|_| ()).map_err(|e| {
                StoreError::sqlx(backend, format!("cannot deactivate the model versions in {}", self.display_url), e)
            })
        })
    }

    /// Take the retraining lock without waiting: `None` when another process holds it. On Postgres this is a
    /// session advisory lock keyed by the schema, held on a connection of its own until
    /// [`RetrainLock::release`]; on SQLite (one process per file) it is always granted.
    pub async fn try_retrain_lock(&self) -> Result<Option<RetrainLock>, StoreError> {
        const SQL: &str = "SELECT pg_try_advisory_lock(hashtext('rebound.model_retrain'), hashtext(current_schema()))";
        let Pool::Postgres(pool) = &self.pool else { return Ok(Some(RetrainLock { conn: None })) };
        let err = |e| StoreError::sqlx(Backend::Postgres, format!("cannot take the retraining lock in {}", self.display_url), e);
        let mut conn = pool.acquire().await.map_err(err)?;
        let granted: bool = sqlx::query_scalar(SQL).fetch_one(&mut *conn).await.map_err(err)?;
        Ok(granted.then_some(RetrainLock { conn: Some(conn) }))
    }

    /// Every recorded classifier version, oldest first.
    pub async fn model_versions(&self) -> Result<Vec<ModelVersion>, StoreError> {
        type Row = (i64, String, String, String, Option<String>, bool, bool);
        let rows: Vec<Row> = with_pool!(self, |pool, backend| {
            let sql = format!(
                "SELECT id, {}, trained_on, metrics, path, weights IS NOT NULL, active FROM model_versions ORDER BY id",
                created_at_text(backend)
            );
            sqlx::query_as(&sql).fetch_all(pool).await.map_err(|e| {
                StoreError::sqlx(backend, format!("cannot read model versions from {}", self.display_url), e)
            })
        })?;
        Ok(rows
            .into_iter()
            .map(|r| ModelVersion {
                id: r.0,
                created_at: r.1,
                trained_on: r.2,
                metrics_json: r.3,
                path: r.4,
                has_weights: r.5,
                active: r.6,
            })
            .collect())
    }

    /// The weights stored in version `id`'s row, if any.
    pub async fn model_weights(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        const SQL: &str = "SELECT weights FROM model_versions WHERE id = $1";
        let weights: Option<Option<Vec<u8>>> = with_pool!(self, |pool, backend| {
            sqlx::query_scalar(SQL).bind(id).fetch_optional(pool).await.map_err(|e| {
                StoreError::sqlx(backend, format!("cannot read model version {id} from {}", self.display_url), e)
            })
        })?;
        Ok(weights.flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_failures_are_never_hard() {
        assert!(transient(Some("delayed"), Some("5.1.1"), None));
        assert!(transient(Some("failed"), Some("4.2.2"), Some(452)));
        assert!(transient(None, None, Some(450)));
        assert!(!transient(Some("failed"), Some("5.1.1"), Some(550)));
        assert!(!transient(None, None, None));
    }
}
