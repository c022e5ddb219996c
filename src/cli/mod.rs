//! The command line. One file per command; this branch carries only `digest`.

pub mod digest;
