//! rebound: runs beside an MTA, ingests what comes back (DSNs, free-text bounces, ARF reports), classifies
//! every bounced recipient, stores everything in SQLite or Postgres, checks SPF and reports SPF failures.
//!
//! Modules follow the data's path: [`ingest`] → [`parse`] → [`classify`] → [`store`].
//! `parse` and `classify` are pure: no I/O, no database, no async.

pub mod classify;
pub mod cli;
pub mod config;
pub mod digest;
pub mod ingest;
pub mod lifecycle;
pub mod metrics;
pub mod parse;
pub mod report;
pub mod serve;
pub mod spf;
pub mod store;

/// Exit codes of the CLI (sysexits.h), part of the CLI contract in docs/.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Command line usage error.
    pub const USAGE: i32 = 64;
    /// The input data was incorrect (e.g. a message over the size limit).
    pub const DATAERR: i32 = 65;
    /// Temporary failure: nothing was acknowledged, the caller (MTA) should retry.
    pub const TEMPFAIL: i32 = 75;
}
