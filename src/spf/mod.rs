//! SPF (RFC 7208): an evaluator of our own, strict where mail-auth 0.13.3 is lenient, over an injected
//! [`dns::Resolver`]; the result headers (Received-SPF, Authentication-Results); the configuration; and
//! the Postfix policy delegation server.
//!
//! Outcomes are values ([`SpfResult`]); an `Err` anywhere in this module means rebound failed, never that
//! the sender did.
//!
//! Where this evaluator differs from mail-auth 0.13.3's (each has a test in `tests/spf_eval.rs`):
//! malformed records (`ip4:1.2.3.4/33`, `a/24/64`, `-all.`, unknown mechanisms, modifiers with bad
//! names or macro syntax, `exp=`/`redirect=` twice or empty, non-ASCII) are `permerror` before anything
//! is evaluated; two `v=spf1` records are a `permerror`; `ptr` without a domain-spec uses the current
//! domain and works over IPv6; the void-lookup limit of 2 is enforced; `include` of a domain without a
//! record is a `permerror`.

pub mod config;
pub mod dns;
mod eval;
pub mod headers;
pub mod macros;
pub mod policy;
pub mod record;
pub mod server;

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

pub use dns::{DnsResolver, Resolver};
pub use eval::{MAX_DNS_TERMS, MAX_NAMES_PER_LOOKUP, MAX_VOID_LOOKUPS};

/// The seven results of check_host() (RFC 7208 §2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpfResult {
    /// The client is authorized.
    Pass,
    /// The client is explicitly not authorized.
    Fail,
    /// Weakly not authorized.
    SoftFail,
    /// The domain makes no assertion.
    Neutral,
    /// No SPF record, or no valid domain to check.
    None,
    /// A transient (DNS) error; retrying may give a definite result.
    TempError,
    /// The domain's records could not be interpreted.
    PermError,
}

impl SpfResult {
    /// The result word as RFC 7208 writes it: `pass`, `fail`, `softfail`, `neutral`, `none`,
    /// `temperror`, `permerror`.
    pub fn as_str(self) -> &'static str {
        match self {
            SpfResult::Pass => "pass",
            SpfResult::Fail => "fail",
            SpfResult::SoftFail => "softfail",
            SpfResult::Neutral => "neutral",
            SpfResult::None => "none",
            SpfResult::TempError => "temperror",
            SpfResult::PermError => "permerror",
        }
    }

    /// Parses a result word (any case).
    pub fn from_word(s: &str) -> Option<SpfResult> {
        Some(match s.to_ascii_lowercase().as_str() {
            "pass" => SpfResult::Pass,
            "fail" => SpfResult::Fail,
            "softfail" => SpfResult::SoftFail,
            "neutral" => SpfResult::Neutral,
            "none" => SpfResult::None,
            "temperror" => SpfResult::TempError,
            "permerror" => SpfResult::PermError,
            _ => return None,
        })
    }
}

impl fmt::Display for SpfResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which identity was checked (RFC 7208 §2.3, §2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Identity {
    /// The HELO/EHLO name.
    Helo,
    /// The MAIL FROM reverse-path (postmaster@HELO when it is null).
    MailFrom,
}

impl Identity {
    /// `helo` or `mailfrom`, as Received-SPF's `identity=` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Identity::Helo => "helo",
            Identity::MailFrom => "mailfrom",
        }
    }
}

/// The record and term that decided a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The domain whose record held the term.
    pub domain: String,
    /// That record, as published.
    pub record: String,
    /// The term as written (e.g. `-all`, `include:_spf.example.com`), or `default` when no term matched
    /// (the implicit `?all` of RFC 7208 §4.7).
    pub mechanism: String,
}

/// An SPF record that was fetched during the evaluation (for SPF-DNS in reports, RFC 6591 §3.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EvaluatedRecord {
    /// The domain queried.
    pub domain: String,
    /// The record text.
    pub record: String,
    /// How the evaluation got there.
    pub reached_by: Reach,
}

/// How check_host() reached a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reach {
    /// The domain of the identity checked.
    Top,
    /// An `include:` mechanism.
    Include,
    /// A `redirect=` modifier.
    Redirect,
}

/// What check_host() found for one domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// The result.
    pub result: SpfResult,
    /// The domain checked (the top-level one).
    pub domain: String,
    /// Which record and term decided, when one did.
    pub decision: Option<Decision>,
    /// The explanation of a fail from the domain's `exp=` (RFC 7208 §6.2), when it gave one.
    pub explanation: Option<String>,
    /// For temperror/permerror (and skipped identities): what went wrong.
    pub problem: Option<String>,
    /// Every SPF record fetched, in order (the top-level one first).
    pub records: Vec<EvaluatedRecord>,
    /// DNS-querying terms used (limit [`MAX_DNS_TERMS`]).
    pub dns_terms: u32,
    /// Void lookups seen (limit [`MAX_VOID_LOOKUPS`]).
    pub void_lookups: u32,
}

impl Outcome {
    fn skipped(domain: &str, why: &str) -> Outcome {
        Outcome {
            result: SpfResult::None,
            domain: domain.to_string(),
            decision: None,
            explanation: None,
            problem: Some(why.to_string()),
            records: Vec::new(),
            dns_terms: 0,
            void_lookups: 0,
        }
    }
}

/// The check of one identity: who the sender was taken to be, and the outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdentityCheck {
    /// HELO or MAIL FROM.
    pub identity: Identity,
    /// `<sender>` as check_host() saw it (`postmaster@HELO` for HELO and for a null MAIL FROM).
    pub sender: String,
    /// The outcome.
    pub outcome: Outcome,
}

impl IdentityCheck {
    /// The result.
    pub fn result(&self) -> SpfResult {
        self.outcome.result
    }
}

/// The SMTP session facts an SPF check needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfRequest {
    /// The client's address.
    pub ip: IpAddr,
    /// HELO/EHLO as the client sent it (empty if none).
    pub helo: String,
    /// The MAIL FROM address without angle brackets (empty for the null reverse-path `<>`).
    pub mail_from: String,
}

/// The checks of both identities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpfVerdict {
    /// The HELO check, unless it was not asked for.
    pub helo: Option<IdentityCheck>,
    /// The MAIL FROM check, unless it was not asked for.
    pub mail_from: Option<IdentityCheck>,
}

/// Runs SPF checks against one resolver.
#[derive(Debug, Clone)]
pub struct Verifier<R> {
    resolver: R,
    receiver: String,
    time_limit: Duration,
}

/// RFC 7208 §4.6.4 asks for a time limit of at least 20 seconds per check.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(20);

impl<R: Resolver> Verifier<R> {
    /// A verifier; `receiver` is our host name (Received-SPF `receiver=`, the `%{r}` macro).
    pub fn new(resolver: R, receiver: impl Into<String>) -> Self {
        Verifier { resolver, receiver: receiver.into(), time_limit: DEFAULT_TIME_LIMIT }
    }

    /// Changes the overall time limit of one check (a check over it is a `temperror`).
    pub fn with_time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = limit;
        self
    }

    /// Our host name.
    pub fn receiver(&self) -> &str {
        &self.receiver
    }

    /// The resolver.
    pub fn resolver(&self) -> &R {
        &self.resolver
    }

    /// check_host(ip, domain, sender) as RFC 7208 §4 defines it. `sender` is `local@domain`; a missing
    /// local-part becomes `postmaster`.
    pub async fn check_host(&self, ip: IpAddr, domain: &str, sender: &str, helo: &str) -> Outcome {
        let ip = ip.to_canonical();
        let (local, sender_domain) = split_sender(sender);
        let params = eval::Params {
            ip,
            local: &local,
            sender_domain: &sender_domain,
            helo,
            receiver: &self.receiver,
            timestamp: chrono::Utc::now().timestamp(),
        };
        let evaluation = eval::Evaluation::new(&self.resolver, &params);
        match tokio::time::timeout(self.time_limit, evaluation.run(domain)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome {
                result: SpfResult::TempError,
                problem: Some(format!("check took longer than {} s", self.time_limit.as_secs())),
                ..Outcome::skipped(domain, "")
            },
        }
    }

    /// The HELO identity (RFC 7208 §2.3): skipped (`none`) when HELO is empty, an address literal or
    /// not a multi-label name.
    pub async fn check_helo(&self, ip: IpAddr, helo: &str) -> IdentityCheck {
        let sender = format!("postmaster@{helo}");
        let outcome = if helo.is_empty() {
            Outcome::skipped(helo, "no HELO name")
        } else if is_address_literal(helo) {
            Outcome::skipped(helo, "HELO is an address literal")
        } else if !eval::is_valid_domain(helo) {
            Outcome::skipped(helo, "HELO is not a multi-label domain name")
        } else {
            self.check_host(ip, helo, &sender, helo).await
        };
        IdentityCheck { identity: Identity::Helo, sender, outcome }
    }

    /// The MAIL FROM identity (RFC 7208 §2.4); a null reverse-path is checked as `postmaster@HELO`.
    pub async fn check_mail_from(&self, ip: IpAddr, helo: &str, mail_from: &str) -> IdentityCheck {
        let mail_from = mail_from.trim();
        let mail_from = mail_from.strip_prefix('<').and_then(|m| m.strip_suffix('>')).unwrap_or(mail_from);
        let sender = if mail_from.is_empty() {
            format!("postmaster@{helo}")
        } else if mail_from.contains('@') {
            let (local, domain) = split_sender(mail_from);
            format!("{local}@{domain}")
        } else {
            format!("postmaster@{mail_from}")
        };
        let (_, domain) = split_sender(&sender);
        let outcome = if domain.is_empty() {
            Outcome::skipped(&domain, "no domain to check")
        } else {
            self.check_host(ip, &domain, &sender, helo).await
        };
        IdentityCheck { identity: Identity::MailFrom, sender, outcome }
    }

    /// Both identities, HELO first (RFC 7208 §2.3 recommends it).
    pub async fn verify(&self, req: &SpfRequest) -> SpfVerdict {
        let helo = self.check_helo(req.ip, &req.helo).await;
        let mail_from = self.check_mail_from(req.ip, &req.helo, &req.mail_from).await;
        SpfVerdict { helo: Some(helo), mail_from: Some(mail_from) }
    }
}

/// `local@domain` split at the last `@`; an empty local-part becomes `postmaster` (RFC 7208 §4.3).
fn split_sender(sender: &str) -> (String, String) {
    match sender.rsplit_once('@') {
        Some((local, domain)) => {
            let local = if local.is_empty() { "postmaster" } else { local };
            (local.to_string(), domain.to_string())
        }
        None => ("postmaster".to_string(), sender.to_string()),
    }
}

/// `[192.0.2.1]`, `[IPv6:...]` or a bare address.
fn is_address_literal(helo: &str) -> bool {
    helo.starts_with('[') || helo.parse::<IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_splitting() {
        assert_eq!(split_sender("@example.net"), ("postmaster".into(), "example.net".into()));
        assert_eq!(split_sender("Macro Error@e8.example.com"), ("Macro Error".into(), "e8.example.com".into()));
        assert_eq!(split_sender("a@b@example.com"), ("a@b".into(), "example.com".into()));
    }

    #[test]
    fn result_words_round_trip() {
        for r in [SpfResult::Pass, SpfResult::Fail, SpfResult::SoftFail, SpfResult::Neutral, SpfResult::None, SpfResult::TempError, SpfResult::PermError] {
            assert_eq!(SpfResult::from_word(r.as_str()), Some(r));
        }
    }
}
