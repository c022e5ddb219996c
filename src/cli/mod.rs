//! The command line (design.md, "CLI contract"): argument parsing with clap, logging, the runtime, and
//! the mapping of every failure onto the exit codes of [`crate::exit`]. One file per command.

pub mod classify;
pub mod db;
pub mod digest;
pub mod ingest;
pub mod label;
pub mod model;
pub mod serve;
pub mod spf;
pub mod versions;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::exit;

const EXAMPLES: &str = "\
Examples:
  rebound serve --config config/rebound.toml     LMTP on 127.0.0.1:2424 into sqlite://rebound.db
  rebound ingest ~/Maildir bounces.mbox one.eml  store files, directories, Maildirs, mbox files
  rebound ingest - < message.eml                 store one message from stdin (Postfix pipe)
  rebound classify --format table bounce.eml     what rebound makes of a bounce, no database
  rebound db migrate --db postgres://rebound@localhost/rebound

Exit codes: 0 ok, 64 usage or configuration error, 65 bad input (e.g. a message over the size limit),
75 temporary failure (database unavailable: nothing was acknowledged, retry later).
Logs go to stderr; set the level with -v, -vv or RUST_LOG (e.g. RUST_LOG=rebound=debug).";

/// rebound: ingests bounces, DSNs and ARF reports beside an MTA, classifies every bounced recipient and
/// stores it all in SQLite or Postgres.
#[derive(Debug, Parser)]
#[command(name = "rebound", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Cli {
    /// More log output: -v debug, -vv trace (RUST_LOG takes precedence).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: LMTP listener that stores every message it is given, and the SPF policy server
    /// when [spf] is configured.
    Serve(serve::ServeArgs),
    /// Store messages from files, directories (recursive), Maildirs, mbox files, or one on stdin ('-').
    Ingest(ingest::IngestArgs),
    /// Parse and classify messages without a database: one line per bounced recipient.
    Classify(classify::ClassifyArgs),
    /// Database maintenance.
    Db(db::DbArgs),
    /// Write a digest of a period (HTML with charts, or plain text): `rebound digest --since 7d --out d.html`.
    Digest(digest::DigestArgs),
    /// Train, evaluate and perturb the classifier's model; list and roll back its database versions.
    Model(model::ModelArgs),
    /// Confirm a bounce's reason or custom category: `rebound label 42 mailboxfull`.
    Label(label::LabelArgs),
    /// SPF checks (RFC 7208): `rebound spf check --ip IP --helo NAME --mail-from ADDR`.
    Spf(spf::SpfArgs),
}

/// Where the database is: `--db`, else `REBOUND_DB`, else `[database] url` of `--config`, else the default.
#[derive(Debug, Clone, Args)]
pub struct DbOptions {
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB [default: the config's, else sqlite://rebound.db]
    #[arg(long, env = "REBOUND_DB", value_name = "URL")]
    pub db: Option<String>,
    /// Config file to read the database URL and limits from.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl DbOptions {
    /// The configuration (defaults without `--config`) with `--db` applied, validated.
    pub fn resolve(&self) -> Result<Config, Failure> {
        let mut config = load_config(self.config.as_deref())?;
        if let Some(url) = &self.db {
            config.database.url = url.clone();
            let source = self.config.as_deref().unwrap_or(Path::new("--db"));
            config.validate(source).map_err(Failure::usage)?;
        }
        Ok(config)
    }
}

/// Read `path`, or take the defaults when there is none.
pub fn load_config(path: Option<&Path>) -> Result<Config, Failure> {
    match path {
        Some(path) => Config::load(path).map_err(Failure::usage),
        None => Ok(Config::default()),
    }
}

/// A command's failure: what to print and the exit code.
#[derive(Debug)]
pub struct Failure {
    /// One of [`crate::exit`].
    pub code: i32,
    /// What went wrong, with its causes.
    pub error: anyhow::Error,
}

impl Failure {
    /// Exit 64: bad command line or configuration.
    pub fn usage(e: impl Into<anyhow::Error>) -> Failure {
        Failure { code: exit::USAGE, error: e.into() }
    }

    /// Exit 65: bad input data.
    pub fn data(e: impl Into<anyhow::Error>) -> Failure {
        Failure { code: exit::DATAERR, error: e.into() }
    }

    /// Exit 75: temporary failure, nothing was acknowledged.
    pub fn temporary(e: impl Into<anyhow::Error>) -> Failure {
        Failure { code: exit::TEMPFAIL, error: e.into() }
    }
}

/// Parse the command line, run the command, return the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { exit::USAGE } else { exit::OK };
        }
    };
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rebound: cannot start the async runtime: {e}");
            return exit::TEMPFAIL;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Ingest(args) => ingest::run(args).await,
            Command::Classify(args) => classify::run(args).await,
            Command::Db(args) => db::run(args).await,
            Command::Model(args) => model::run(args).await,
            Command::Label(args) => label::run(args).await,
            Command::Digest(args) => digest::run(args).await.map_err(Failure::temporary),
            Command::Spf(args) => spf::run(args).await.map_err(Failure::temporary),
        }
    });
    // Do not wait for blocking reader threads of an import that stopped early.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(Failure { code, error }) => {
            eprintln!("rebound: {error:#}");
            code
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "rebound=info,warn",
        1 => "rebound=debug,info",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ingest_takes_paths_and_db() {
        let cli = Cli::try_parse_from(["rebound", "ingest", "--db", "sqlite://x.db", "a.eml", "dir"]).unwrap();
        let Command::Ingest(args) = cli.command else { panic!("not ingest") };
        assert_eq!(args.paths, [PathBuf::from("a.eml"), PathBuf::from("dir")]);
        assert_eq!(args.db.db.as_deref(), Some("sqlite://x.db"));
        assert!(Cli::try_parse_from(["rebound", "ingest"]).is_err(), "a path is required");
    }

    #[test]
    fn db_flag_overrides_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.toml");
        std::fs::write(&path, "[database]\nurl = \"sqlite://from-config.db\"\n").unwrap();
        let opts = DbOptions { db: None, config: Some(path.clone()) };
        assert_eq!(opts.resolve().unwrap().database.url, "sqlite://from-config.db");
        let opts = DbOptions { db: Some("sqlite://flag.db".into()), config: Some(path) };
        assert_eq!(opts.resolve().unwrap().database.url, "sqlite://flag.db");
        let opts = DbOptions { db: Some("mysql://nope".into()), config: None };
        assert_eq!(opts.resolve().unwrap_err().code, exit::USAGE);
    }
}
