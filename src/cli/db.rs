//! `rebound db migrate [--db URL]`.

use anyhow::anyhow;
use clap::{Args, Subcommand};

use super::{DbOptions, Failure};
use crate::exit;
use crate::store::{Store, redact_url};

/// Arguments of `rebound db`.
#[derive(Debug, Args)]
pub struct DbArgs {
    /// What to do with the database.
    #[command(subcommand)]
    pub command: DbCommand,
}

/// Database maintenance commands.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Create or upgrade the schema (also done on every start of serve and ingest).
    #[command(after_help = "\
Examples:
  rebound db migrate                                  sqlite://rebound.db in the current directory
  rebound db migrate --db postgres://rebound@localhost/rebound")]
    Migrate(DbOptions),
}

/// Run a database command; exit 75 when the database cannot be reached or migrated.
pub async fn run(args: DbArgs) -> Result<i32, Failure> {
    match args.command {
        DbCommand::Migrate(options) => {
            let config = options.resolve()?;
            let url = redact_url(&config.database.url);
            let store = Store::connect_without_migrating(&config.database.url)
                .await
                .map_err(|e| Failure::temporary(anyhow!("cannot open database {url}: {e}")))?;
            store.migrate().await.map_err(|e| Failure::temporary(anyhow!("cannot migrate database {url}: {e}")))?;
            println!("database {url} is up to date");
            Ok(exit::OK)
        }
    }
}
