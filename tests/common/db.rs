//! A migrated [`Store`] for one test, on a SQLite file in a temporary directory or in a fresh schema of the
//! Postgres at `REBOUND_TEST_POSTGRES_URL`, and one-line queries that run on whichever backend it is.

use rebound::store::{Backend, Store};

use super::{PgSchema, create_postgres_schema};

/// A migrated store for one test, and what to clean up after it (the store is dropped first).
pub struct TestDb {
    /// The store under test.
    pub store: Store,
    /// The URL it was opened with (a second `Store::open` of it is another process sharing the database).
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    _schema: Option<PgSchema>,
}

impl TestDb {
    /// A store on a new SQLite file.
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = super::sqlite_url(dir.path());
        let store = Store::open(&url).await.expect("open SQLite store");
        assert_eq!(store.backend(), Backend::Sqlite);
        TestDb { store, url, _dir: Some(dir), _schema: None }
    }

    /// A store in a new Postgres schema, dropped when the test ends (even by a panic); `None` (after saying
    /// why) when no test Postgres is configured.
    pub async fn postgres(test: &str) -> Option<TestDb> {
        let schema = create_postgres_schema(test).await?;
        let store = Store::open(&schema.url).await.expect("connect to and migrate the test Postgres");
        assert_eq!(store.backend(), Backend::Postgres);
        Some(TestDb { store, url: schema.url.clone(), _dir: None, _schema: Some(schema) })
    }
}

/// One `#[tokio::test]` per backend for each async `fn NAME(db: &TestDb)` named: `sqlite::NAME` and
/// `postgres::NAME` (which skips, saying why, without `REBOUND_TEST_POSTGRES_URL`).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = $crate::common::db::TestDb::sqlite().await;
                    super::$name(&db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(db) = $crate::common::db::TestDb::postgres(stringify!($name)).await else { return };
                    super::$name(&db).await;
                }
            )*
        }
    };
}

/// Run `$body` with `$pool` bound to whichever concrete pool the store has (the body compiles for both).
#[macro_export]
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        if let Some($pool) = $store.sqlite_pool() {
            $body
        } else if let Some($pool) = $store.postgres_pool() {
            $body
        } else {
            unreachable!("a store has one of the two pools")
        }
    };
}

/// One integer from `sql`.
pub async fn scalar(store: &Store, sql: &str) -> i64 {
    with_pool!(store, pool => sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// One nullable text from `sql`.
pub async fn text(store: &Store, sql: &str) -> Option<String> {
    with_pool!(store, pool => sqlx::query_scalar::<_, Option<String>>(sql).fetch_one(pool).await)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The first column of every row of `sql`, as texts.
pub async fn texts(store: &Store, sql: &str) -> Vec<String> {
    with_pool!(store, pool => sqlx::query_scalar::<_, String>(sql).fetch_all(pool).await)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Run one statement.
pub async fn execute(store: &Store, sql: &str) {
    with_pool!(store, pool => sqlx::query(sql).execute(pool).await.map(|_| ()))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}
