//! The command line (design.md "CLI contract"). Each subcommand lives in its own file and returns an
//! exit code (sysexits: 0, 64 usage, 65 bad input, 75 temporary failure).

pub mod spf;

use clap::{Parser, Subcommand};

/// rebound: bounces, DSNs, ARF reports and SPF beside an MTA.
#[derive(Debug, Parser)]
#[command(name = "rebound", version, about)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// SPF checks (RFC 7208).
    Spf(spf::SpfArgs),
}

/// Parses the command line, runs the subcommand and returns the process exit code.
pub async fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { crate::exit::USAGE } else { crate::exit::OK };
            let _ = e.print();
            return code;
        }
    };
    let result = match cli.command {
        Command::Spf(args) => spf::run(args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rebound: {e:#}");
            crate::exit::TEMPFAIL
        }
    }
}
