//! Storage with sqlx: SQLite (the embedded default) and Postgres, migrations in `migrations/`.
