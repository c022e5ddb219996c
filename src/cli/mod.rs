//! The command line. On the `model` branch only the `model` command lives here; the ingest branch owns the
//! full dispatcher (serve, ingest, classify, db) and adds `Command::Model` → [`model::run`] beside its own.

pub mod model;

use clap::{Parser, Subcommand};

/// rebound: bounce, DSN and ARF classification beside an MTA.
#[derive(Debug, Parser)]
#[command(name = "rebound", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train, evaluate and perturb the classifier's model.
    Model(model::ModelArgs),
}

/// Parse the command line, run the command, return the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rebound: cannot start the runtime: {e}");
            return crate::exit::TEMPFAIL;
        }
    };
    match cli.command {
        Command::Model(args) => match runtime.block_on(model::run(args)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("rebound: {e:#}");
                crate::exit::DATAERR
            }
        },
    }
}
