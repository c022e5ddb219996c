//! Storage with sqlx: SQLite (the embedded default) and Postgres, chosen by the URL's scheme.
//!
//! Owns the connection pools, the migrations (`migrations/sqlite`, `migrations/postgres`, applied with
//! `sqlx::migrate!`), the write path of ingested messages ([`Store::save_messages`]), and what people teach
//! the classifier (categories, labels, model versions). The tables and views are the SQL interface documented
//! in `docs/sql.md`.
//!
//! Durability: a message counts as stored only once its transaction has committed. SQLite runs in WAL mode with
//! `synchronous=FULL`, so a commit survives power loss (with `NORMAL` the last commits could be lost, which
//! would break "acknowledged = committed"); batching messages into one transaction is what makes this cheap.

mod categories;
mod error;
mod labels;
mod save;
pub mod spf;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};

pub use error::{StoreError, StoreErrorKind};
pub use labels::{Category, LabelledBounce, ModelVersion, NewModelVersion, RetrainLock};
pub use save::{NewMessage, SaveOutcome};

/// How long a SQLite writer waits for the lock before reporting [`StoreErrorKind::Busy`].
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a pooled connection (or a first Postgres connection).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// SQLite pool size: one writer at a time anyway, a few readers beside it (WAL).
const SQLITE_MAX_CONNECTIONS: u32 = 4;
/// Postgres pool size per process.
const POSTGRES_MAX_CONNECTIONS: u32 = 8;

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// SQLite, a file beside the process (`sqlite://rebound.db`).
    Sqlite,
    /// Postgres (`postgres://user@host/db`).
    Postgres,
}

impl Backend {
    /// The backend a URL names by its scheme, if any.
    pub fn from_url(url: &str) -> Option<Backend> {
        let scheme = url.split_once(':')?.0.to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Some(Backend::Sqlite),
            "postgres" | "postgresql" => Some(Backend::Postgres),
            _ => None,
        }
    }

    /// `sqlite` or `postgres`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The pool of one backend.
#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A handle on the database: cheap to clone (it wraps a connection pool).
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    /// The URL with any password replaced, for messages and logs.
    display_url: String,
}

impl Store {
    /// Connect (creating a SQLite file if missing, in WAL mode) and apply pending migrations.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let store = Store::connect_without_migrating(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connect without touching the schema (creates an empty SQLite file if missing).
    pub async fn connect_without_migrating(url: &str) -> Result<Store, StoreError> {
        let display_url = redact_url(url);
        match Backend::from_url(url) {
            Some(Backend::Sqlite) => {
                let options = SqliteConnectOptions::from_str(url).map_err(|e| {
                    StoreError::sqlx(Backend::Sqlite, format!("invalid database URL {display_url}"), e)
                })?;
                Store::connect_sqlite_as(options, display_url).await
            }
            Some(Backend::Postgres) => {
                let options = PgConnectOptions::from_str(url).map_err(|e| {
                    StoreError::sqlx(Backend::Postgres, format!("invalid database URL {display_url}"), e)
                })?;
                Store::connect_postgres_as(options, display_url).await
            }
            None => Err(StoreError::new(
                StoreErrorKind::Config,
                format!("unsupported database URL {display_url}: expected sqlite://FILE or postgres://USER@HOST/DB"),
            )),
        }
    }

    /// Connect to SQLite with options built by the caller (e.g. extra pragmas); the store's own settings (WAL,
    /// `synchronous=FULL`, busy timeout, foreign keys, create if missing) are applied on top. Does not migrate.
    pub async fn connect_sqlite(options: SqliteConnectOptions) -> Result<Store, StoreError> {
        let display_url = format!("sqlite://{}", options.get_filename().display());
        Store::connect_sqlite_as(options, display_url).await
    }

    async fn connect_sqlite_as(options: SqliteConnectOptions, display_url: String) -> Result<Store, StoreError> {
        let file = options.get_filename();
        let in_memory = file.as_os_str().is_empty() || file.to_string_lossy().contains(":memory:");
        if !in_memory
            && let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            return Err(StoreError::new(
                StoreErrorKind::Config,
                format!("cannot open database {display_url}: directory {} does not exist", dir.display()),
            ));
        }
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(SQLITE_MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::sqlx(Backend::Sqlite, format!("cannot open database {display_url}"), e))?;
        Ok(Store { pool: Pool::Sqlite(pool), display_url })
    }

    /// Connect to Postgres with options built by the caller (e.g. a `search_path`). Does not migrate.
    pub async fn connect_postgres(options: PgConnectOptions) -> Result<Store, StoreError> {
        let display_url = format!(
            "postgres://{}@{}:{}/{}",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        );
        Store::connect_postgres_as(options, display_url).await
    }

    /// One connection is made first so that a wrong host, port or password fails at once with the server's
    /// answer, instead of as a pool timeout.
    async fn connect_postgres_as(options: PgConnectOptions, display_url: String) -> Result<Store, StoreError> {
        if matches!(options.get_ssl_mode(), PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull) {
            return Err(StoreError::new(
                StoreErrorKind::Config,
                format!(
                    "cannot connect to {display_url}: this build has no TLS support, but sslmode (or PGSSLMODE) \
                     asks for it; use a local connection with sslmode=disable or prefer"
                ),
            ));
        }
        let context = || format!("cannot connect to {display_url}");
        let probe = tokio::time::timeout(ACQUIRE_TIMEOUT, options.connect()).await.map_err(|_| {
            StoreError::new(
                StoreErrorKind::Unreachable,
                format!("{}: no answer within {} s", context(), ACQUIRE_TIMEOUT.as_secs()),
            )
        })?;
        probe.map_err(|e| StoreError::sqlx(Backend::Postgres, context(), e))?.close().await.ok();
        let pool = PgPoolOptions::new()
            .max_connections(POSTGRES_MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::sqlx(Backend::Postgres, context(), e))?;
        Ok(Store { pool: Pool::Postgres(pool), display_url })
    }

    /// Apply pending migrations (idempotent), then seed the built-in categories that are missing.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let context = || format!("cannot migrate database {}", self.display_url);
        match &self.pool {
            Pool::Sqlite(pool) => sqlx::migrate!("migrations/sqlite")
                .run(pool)
                .await
                .map_err(|e| StoreError::migrate(Backend::Sqlite, context(), e))?,
            Pool::Postgres(pool) => sqlx::migrate!("migrations/postgres")
                .run(pool)
                .await
                .map_err(|e| StoreError::migrate(Backend::Postgres, context(), e))?,
        }
        categories::seed_builtin(self).await
    }

    /// Which backend this store uses.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// The database URL with any password replaced by `***`, for messages and logs.
    pub fn display_url(&self) -> &str {
        &self.display_url
    }

    /// The SQLite pool, for modules with their own queries (`None` on Postgres).
    pub fn sqlite_pool(&self) -> Option<&SqlitePool> {
        match &self.pool {
            Pool::Sqlite(pool) => Some(pool),
            Pool::Postgres(_) => None,
        }
    }

    /// The Postgres pool, for modules with their own queries (`None` on SQLite).
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match &self.pool {
            Pool::Postgres(pool) => Some(pool),
            Pool::Sqlite(_) => None,
        }
    }

    /// Close every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
        }
    }
}

/// A database URL safe to log: the password of `scheme://user:password@host` and any `password=` query
/// parameter become `***`.
pub fn redact_url(url: &str) -> String {
    let (before_query, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = String::with_capacity(url.len());
    match before_query.split_once("://") {
        Some((scheme, rest)) => {
            out.push_str(scheme);
            out.push_str("://");
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    match userinfo.split_once(':') {
                        Some((user, _password)) => {
                            out.push_str(user);
                            out.push_str(":***");
                        }
                        None => out.push_str(userinfo),
                    }
                    out.push('@');
                    out.push_str(host);
                }
                None => out.push_str(authority),
            }
            out.push_str(path);
        }
        None => out.push_str(before_query),
    }
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => param.to_string(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_passwords_only() {
        assert_eq!(redact_url("postgres://u:secret@db:5432/x"), "postgres://u:***@db:5432/x");
        assert_eq!(redact_url("postgres://u@db/x"), "postgres://u@db/x");
        assert_eq!(redact_url("postgres://db/x?user=u&password=secret&sslmode=disable"),
                   "postgres://db/x?user=u&password=***&sslmode=disable");
        assert_eq!(redact_url("postgres://u:p%40ss@db/x"), "postgres://u:***@db/x");
        assert_eq!(redact_url("sqlite://rebound.db"), "sqlite://rebound.db");
        assert_eq!(redact_url("sqlite:rebound.db?mode=rwc"), "sqlite:rebound.db?mode=rwc");
    }

    #[test]
    fn backend_from_scheme() {
        assert_eq!(Backend::from_url("sqlite://x.db"), Some(Backend::Sqlite));
        assert_eq!(Backend::from_url("sqlite::memory:"), Some(Backend::Sqlite));
        assert_eq!(Backend::from_url("postgresql://h/db"), Some(Backend::Postgres));
        assert_eq!(Backend::from_url("mysql://h/db"), None);
        assert_eq!(Backend::from_url("rebound.db"), None);
    }
}
