//! `rebound spf check`: both SPF identities for one client, printed as text (the MAIL FROM result word
//! alone on line 1, the HELO result on line 2) or as JSON (results, explanation, the record evaluated,
//! the mechanism that matched, and the Received-SPF and Authentication-Results headers).

use std::net::IpAddr;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::exit;
use crate::spf::dns::{DnsOptions, DnsResolver, DnsServers};
use crate::spf::{SpfRequest, Verifier, headers};

/// `rebound spf ...`
#[derive(Debug, Args)]
pub struct SpfArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: SpfCommand,
}

/// The `spf` subcommands.
#[derive(Debug, Subcommand)]
pub enum SpfCommand {
    /// Check SPF (RFC 7208) for a client: the HELO identity, then MAIL FROM (postmaster@HELO when empty).
    Check(CheckArgs),
}

/// Output formats of `spf check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Line 1: the MAIL FROM result word; line 2: the HELO result word.
    Text,
    /// One JSON object with both checks, the records, the matching mechanisms and the headers.
    Json,
}

/// `rebound spf check --ip IP [--helo NAME] [--mail-from ADDR] [--dns HOST:PORT] [--format text|json]`
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The SMTP client's IP address (IPv4, IPv6, or IPv4-mapped IPv6).
    #[arg(long)]
    pub ip: IpAddr,
    /// The HELO/EHLO name the client gave (an address literal or a single label skips the HELO check).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub helo: String,
    /// The MAIL FROM address; empty for the null reverse-path (then postmaster@HELO is checked).
    #[arg(long = "mail-from", default_value = "", allow_hyphen_values = true)]
    pub mail_from: String,
    /// Send every DNS query to this server (IP or IP:PORT; UDP, TCP when truncated) instead of the system
    /// resolver.
    #[arg(long)]
    pub dns: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Our host name, for Received-SPF `receiver=`, the authserv-id and the %{r} macro (default: this
    /// machine's host name).
    #[arg(long)]
    pub receiver: Option<String>,
}

/// Runs an `spf` subcommand; returns the exit code.
pub async fn run(args: SpfArgs) -> anyhow::Result<i32> {
    match args.command {
        SpfCommand::Check(check) => run_check(check).await,
    }
}

async fn run_check(args: CheckArgs) -> anyhow::Result<i32> {
    let servers = match &args.dns {
        None => DnsServers::System,
        Some(s) => match DnsServers::parse_one(s) {
            Ok(sa) => DnsServers::List(vec![sa]),
            Err(e) => {
                eprintln!("rebound spf check: {e}");
                return Ok(exit::USAGE);
            }
        },
    };
    let resolver = DnsResolver::new(&DnsOptions { servers, ..DnsOptions::default() })
        .context("cannot set up the DNS resolver")?;
    let receiver = args.receiver.clone().unwrap_or_else(crate::spf::config::host_name);
    let verifier = Verifier::new(resolver, receiver.clone());
    let request = SpfRequest { ip: args.ip, helo: args.helo.clone(), mail_from: args.mail_from.clone() };
    let verdict = verifier.verify(&request).await;
    let (Some(helo), Some(mail_from)) = (&verdict.helo, &verdict.mail_from) else {
        anyhow::bail!("the verifier skipped an identity it was asked to check");
    };
    match args.format {
        Format::Text => {
            println!("{}", mail_from.result());
            println!("{}", helo.result());
        }
        Format::Json => {
            let decision = mail_from.outcome.decision.as_ref();
            let out = json!({
                "ip": args.ip.to_canonical().to_string(),
                "helo": args.helo,
                "mail_from": args.mail_from,
                "result": mail_from.result(),
                "helo_result": helo.result(),
                "explanation": mail_from.outcome.explanation,
                "problem": mail_from.outcome.problem,
                "record": decision.map(|d| &d.record),
                "record_domain": decision.map(|d| &d.domain),
                "mechanism": decision.map(|d| &d.mechanism),
                "checks": { "helo": helo, "mail_from": mail_from },
                "received_spf": headers::received_spf(mail_from, args.ip, &args.helo, &receiver),
                "received_spf_helo": headers::received_spf(helo, args.ip, &args.helo, &receiver),
                "authentication_results": headers::authentication_results(&receiver, &[helo, mail_from]),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(exit::OK)
}
