//! `rebound serve [--config FILE]`.

use std::path::PathBuf;

use clap::Args;

use super::{Failure, load_config};
use crate::exit;
use crate::serve::{self, ServeError};

/// Arguments of `rebound serve`.
#[derive(Debug, Args)]
#[command(after_help = "\
Stops cleanly on SIGTERM or SIGINT: the listener closes, messages in flight are finished and answered \
(within [ingest.lmtp] shutdown_grace), then the process exits 0.

Example:
  rebound serve --config config/rebound.toml
  # then in Postfix: transport_maps entry  bounces.example.com  lmtp:inet:127.0.0.1:2424")]
pub struct ServeArgs {
    /// Config file (TOML); without it every key takes its default (see config/rebound.toml).
    #[arg(long, short, env = "REBOUND_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Run the service until SIGTERM/SIGINT.
pub async fn run(args: ServeArgs) -> Result<i32, Failure> {
    // First of all, so a SIGTERM during start-up is a clean shutdown, not a kill.
    let shutdown = serve::shutdown_on_signals().map_err(Failure::temporary)?;
    let config = load_config(args.config.as_deref())?;
    match serve::run(config, shutdown).await {
        Ok(()) => Ok(exit::OK),
        Err(e @ ServeError::Model(_)) => Err(Failure::usage(e)),
        // The database or the address: worth a retry once the cause is fixed.
        Err(e) => Err(Failure::temporary(e)),
    }
}
