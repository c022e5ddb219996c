//! Store errors, sorted into the kinds a caller acts on: retry later (busy, disk full, read-only,
//! unreachable), fix the configuration or schema, or give up on one message (data).

use std::error::Error as StdError;
use std::fmt;

use super::Backend;

/// What went wrong, at the level a caller decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreErrorKind {
    /// The database is locked by another writer or the connection pool is exhausted.
    Busy,
    /// No space left (SQLite `SQLITE_FULL`, Postgres `53100 disk_full`).
    DiskFull,
    /// The database or its directory cannot be written (file mode, read-only mount, hot standby).
    ReadOnly,
    /// The server (or SQLite file) cannot be reached: connection refused or lost, file gone.
    Unreachable,
    /// The URL or the options are wrong: bad scheme, missing directory, TLS asked for, bad credentials.
    Config,
    /// The schema does not match this program: migrations missing, failed, or newer than this binary.
    Schema,
    /// One message's data was refused by the database (constraint, encoding).
    Data,
    /// Anything else (corruption, protocol errors, internal errors). Treated as temporary.
    Other,
}

impl StoreErrorKind {
    /// Whether retrying later, with the same input and configuration, can succeed. Unknown failures
    /// count as temporary so a message is deferred rather than refused.
    pub fn is_temporary(self) -> bool {
        !matches!(self, StoreErrorKind::Config | StoreErrorKind::Schema | StoreErrorKind::Data)
    }

    /// A short lowercase name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreErrorKind::Busy => "busy",
            StoreErrorKind::DiskFull => "disk_full",
            StoreErrorKind::ReadOnly => "read_only",
            StoreErrorKind::Unreachable => "unreachable",
            StoreErrorKind::Config => "config",
            StoreErrorKind::Schema => "schema",
            StoreErrorKind::Data => "data",
            StoreErrorKind::Other => "other",
        }
    }
}

impl fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error of the store: a kind, what was being done (never a password), and the cause.
///
/// `Display` prints the context and the cause (`cannot open database sqlite://x.db: ...`); like
/// `std::io::Error`, `source()` continues with the cause's own source so a chain prints each text once.
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    context: String,
    cause: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl StoreError {
    /// An error without an underlying cause (our own checks).
    pub(crate) fn new(kind: StoreErrorKind, context: impl Into<String>) -> StoreError {
        StoreError { kind, context: context.into(), cause: None }
    }

    /// An error from sqlx, its kind derived from the driver's error code.
    pub(crate) fn sqlx(backend: Backend, context: impl Into<String>, err: sqlx::Error) -> StoreError {
        StoreError { kind: kind_of_sqlx(backend, &err), context: context.into(), cause: Some(Box::new(err)) }
    }

    /// An error from running migrations.
    pub(crate) fn migrate(backend: Backend, context: impl Into<String>, err: sqlx::migrate::MigrateError) -> StoreError {
        let kind = match &err {
            sqlx::migrate::MigrateError::Execute(e) | sqlx::migrate::MigrateError::ExecuteMigration(e, _) => {
                match kind_of_sqlx(backend, e) {
                    // A statement of a migration that fails as SQL means the schema is not what we expect.
                    StoreErrorKind::Data | StoreErrorKind::Other => StoreErrorKind::Schema,
                    kind => kind,
                }
            }
            _ => StoreErrorKind::Schema,
        };
        StoreError { kind, context: context.into(), cause: Some(Box::new(err)) }
    }

    /// What went wrong, for the caller's decision.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// Whether the same call may succeed later (see [`StoreErrorKind::is_temporary`]).
    pub fn is_temporary(&self) -> bool {
        self.kind.is_temporary()
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)?;
        if let Some(cause) = &self.cause {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.cause.as_ref().and_then(|c| c.source())
    }
}

/// Sort a sqlx error into a kind.
pub(crate) fn kind_of_sqlx(backend: Backend, err: &sqlx::Error) -> StoreErrorKind {
    use sqlx::Error as E;
    match err {
        E::Database(db) => match (backend, db.code()) {
            (Backend::Sqlite, Some(code)) => code.parse::<i32>().map(kind_of_sqlite_code).unwrap_or(StoreErrorKind::Other),
            (Backend::Postgres, Some(code)) => kind_of_sqlstate(&code),
            (_, None) => StoreErrorKind::Other,
        },
        E::Io(io) => match backend {
            Backend::Postgres => StoreErrorKind::Unreachable,
            Backend::Sqlite => match io.kind() {
                std::io::ErrorKind::StorageFull => StoreErrorKind::DiskFull,
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                    StoreErrorKind::ReadOnly
                }
                std::io::ErrorKind::NotFound => StoreErrorKind::Unreachable,
                _ => StoreErrorKind::Other,
            },
        },
        E::Tls(_) | E::Configuration(_) => StoreErrorKind::Config,
        E::PoolTimedOut => match backend {
            Backend::Sqlite => StoreErrorKind::Busy,
            Backend::Postgres => StoreErrorKind::Unreachable,
        },
        E::Migrate(_)
        | E::ColumnDecode { .. }
        | E::Decode(_)
        | E::TypeNotFound { .. }
        | E::ColumnNotFound(_)
        | E::ColumnIndexOutOfBounds { .. } => StoreErrorKind::Schema,
        _ => StoreErrorKind::Other,
    }
}

/// SQLite result codes (<https://www.sqlite.org/rescode.html>); sqlx reports the extended code, whose low
/// byte is the primary code.
fn kind_of_sqlite_code(extended: i32) -> StoreErrorKind {
    match extended & 0xff {
        5 | 6 => StoreErrorKind::Busy,              // SQLITE_BUSY, SQLITE_LOCKED
        13 => StoreErrorKind::DiskFull,             // SQLITE_FULL
        8 | 3 => StoreErrorKind::ReadOnly,          // SQLITE_READONLY, SQLITE_PERM
        14 | 10 => StoreErrorKind::Unreachable,     // SQLITE_CANTOPEN, SQLITE_IOERR
        18..=20 | 25 => StoreErrorKind::Data,       // SQLITE_TOOBIG, SQLITE_CONSTRAINT, SQLITE_MISMATCH, SQLITE_RANGE
        26 | 23 => StoreErrorKind::Config,          // SQLITE_NOTADB, SQLITE_AUTH
        1 => StoreErrorKind::Schema,                // SQLITE_ERROR: no such table/column, SQL error
        _ => StoreErrorKind::Other,                 // SQLITE_CORRUPT, SQLITE_NOMEM, ...
    }
}

/// Postgres SQLSTATE codes (<https://www.postgresql.org/docs/current/errcodes-appendix.html>).
fn kind_of_sqlstate(code: &str) -> StoreErrorKind {
    match code {
        "25006" => StoreErrorKind::ReadOnly, // read_only_sql_transaction
        "53100" => StoreErrorKind::DiskFull, // disk_full
        "40001" | "40P01" | "55P03" | "55006" | "57014" => StoreErrorKind::Busy, // serialization, deadlock, lock, cancel
        "57P01" | "57P02" | "57P03" => StoreErrorKind::Unreachable, // shutdown, crash, cannot connect now
        "3D000" | "3F000" => StoreErrorKind::Config, // database or schema does not exist
        _ => match &code[..code.len().min(2)] {
            "08" => StoreErrorKind::Unreachable, // connection exception
            "53" => StoreErrorKind::Busy,        // insufficient resources (too many connections, memory)
            "22" | "23" => StoreErrorKind::Data, // data exception, integrity constraint violation
            "28" => StoreErrorKind::Config,      // invalid authorization
            "42" => StoreErrorKind::Schema,      // undefined table/column, syntax
            _ => StoreErrorKind::Other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_extended_codes_map_by_primary_code() {
        assert_eq!(kind_of_sqlite_code(5), StoreErrorKind::Busy);
        assert_eq!(kind_of_sqlite_code(517), StoreErrorKind::Busy); // SQLITE_BUSY_SNAPSHOT
        assert_eq!(kind_of_sqlite_code(1032), StoreErrorKind::ReadOnly); // SQLITE_READONLY_DBMOVED
        assert_eq!(kind_of_sqlite_code(275), StoreErrorKind::Data); // SQLITE_CONSTRAINT_CHECK
        assert_eq!(kind_of_sqlite_code(13), StoreErrorKind::DiskFull);
    }

    #[test]
    fn sqlstates_map_by_class() {
        assert_eq!(kind_of_sqlstate("08006"), StoreErrorKind::Unreachable);
        assert_eq!(kind_of_sqlstate("23505"), StoreErrorKind::Data);
        assert_eq!(kind_of_sqlstate("22021"), StoreErrorKind::Data);
        assert_eq!(kind_of_sqlstate("28P01"), StoreErrorKind::Config);
        assert_eq!(kind_of_sqlstate("42P01"), StoreErrorKind::Schema);
        assert_eq!(kind_of_sqlstate("53100"), StoreErrorKind::DiskFull);
        assert_eq!(kind_of_sqlstate("25006"), StoreErrorKind::ReadOnly);
    }

    #[test]
    fn only_config_schema_and_data_are_permanent() {
        assert!(StoreErrorKind::Busy.is_temporary());
        assert!(StoreErrorKind::Other.is_temporary());
        assert!(!StoreErrorKind::Config.is_temporary());
        assert!(!StoreErrorKind::Data.is_temporary());
    }
}
