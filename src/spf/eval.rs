//! check_host() (RFC 7208 §4–§6): record lookup and selection, directive evaluation in order, include
//! and redirect recursion, the limits of §4.6.4 (10 DNS-querying terms, 10 MX and 10 PTR names per
//! lookup, 2 void lookups), and the explanation of a `fail` (§6.2).

use std::net::IpAddr;

use super::dns::{Answer, DnsFailure, Resolver, is_dns_name};
use super::macros::{MacroContext, MacroString};
use super::record::{self, Directive, Mechanism, Qualifier, Record};
use super::{Decision, EvaluatedRecord, Outcome, Reach, SpfResult};

/// Terms that query DNS, per check_host() including recursion (RFC 7208 §4.6.4).
pub const MAX_DNS_TERMS: u32 = 10;
/// Void lookups (NXDOMAIN or an empty answer) tolerated per check (RFC 7208 §4.6.4).
pub const MAX_VOID_LOOKUPS: u32 = 2;
/// MX records looked at per `mx` (more is a permerror) and PTR names per `ptr` or `%{p}`.
pub const MAX_NAMES_PER_LOOKUP: usize = 10;
/// Nesting of include/redirect; the DNS-term limit ends any loop first, this only bounds the stack.
const MAX_DEPTH: u32 = 20;

/// The inputs of check_host() that stay the same through recursion.
pub(crate) struct Params<'a> {
    /// The client IP, with an IPv4-mapped IPv6 address already turned into IPv4 (RFC 7208 §5.6).
    pub ip: IpAddr,
    /// The sender's local-part ("postmaster" when it had none).
    pub local: &'a str,
    /// The sender's domain.
    pub sender_domain: &'a str,
    /// The HELO/EHLO name as given.
    pub helo: &'a str,
    /// Our host name, for `%{r}`.
    pub receiver: &'a str,
    /// For `%{t}`.
    pub timestamp: i64,
}

/// Why evaluation stopped early: the result and a reason for the operator.
struct Stop(SpfResult, String);

impl From<DnsFailure> for Stop {
    fn from(e: DnsFailure) -> Self {
        Stop(SpfResult::TempError, e.to_string())
    }
}

/// What one check_host() level produced.
struct Level {
    result: SpfResult,
    /// The decision: which record and term.
    decision: Option<Decision>,
    /// When the result is a fail: the exp= of the record whose term failed, and that record's domain.
    exp: Option<(MacroString, String)>,
}

/// One evaluation: the counters shared across include/redirect, and the records seen.
pub(crate) struct Evaluation<'a, R: Resolver> {
    resolver: &'a R,
    params: &'a Params<'a>,
    dns_terms: u32,
    voids: u32,
    records: Vec<EvaluatedRecord>,
}

impl<'a, R: Resolver> Evaluation<'a, R> {
    /// A fresh evaluation.
    pub(crate) fn new(resolver: &'a R, params: &'a Params<'a>) -> Self {
        Evaluation { resolver, params, dns_terms: 0, voids: 0, records: Vec::new() }
    }

    /// check_host(ip, domain, sender) and, for a fail, the explanation.
    pub(crate) async fn run(mut self, domain: &str) -> Outcome {
        let (level, problem) = match self.check_host(domain, 0, Reach::Top).await {
            Ok(level) => (level, None),
            Err(Stop(result, why)) => (Level { result, decision: None, exp: None }, Some(why)),
        };
        let explanation = match (&level.result, level.exp) {
            (SpfResult::Fail, Some((exp, exp_domain))) => self.explain(&exp, &exp_domain).await,
            _ => None,
        };
        Outcome {
            result: level.result,
            domain: domain.to_string(),
            decision: level.decision,
            explanation,
            problem,
            records: self.records,
            dns_terms: self.dns_terms,
            void_lookups: self.voids,
        }
    }

    fn ctx<'c>(&'c self, domain: &'c str, validated: Option<&'c str>) -> MacroContext<'c> {
        MacroContext {
            local: self.params.local,
            sender_domain: self.params.sender_domain,
            domain,
            ip: self.params.ip,
            helo: self.params.helo,
            receiver: self.params.receiver,
            validated,
            timestamp: self.params.timestamp,
        }
    }

    /// Expands a domain-spec, resolving `%{p}` first when it is used.
    async fn expand(&mut self, spec: &MacroString, domain: &str) -> Result<String, Stop> {
        let validated = if spec.uses_ptr() { self.validated_name(domain).await } else { None };
        Ok(spec.expand_domain(&self.ctx(domain, validated.as_deref())))
    }

    fn count_dns_term(&mut self) -> Result<(), Stop> {
        self.dns_terms += 1;
        if self.dns_terms > MAX_DNS_TERMS {
            return Err(Stop(SpfResult::PermError, format!("more than {MAX_DNS_TERMS} DNS-querying terms")));
        }
        Ok(())
    }

    fn count_void<T>(&mut self, answer: &Answer<T>) -> Result<(), Stop> {
        if answer.is_void() {
            self.voids += 1;
            if self.voids > MAX_VOID_LOOKUPS {
                return Err(Stop(SpfResult::PermError, format!("more than {MAX_VOID_LOOKUPS} void DNS lookups")));
            }
        }
        Ok(())
    }

    /// RFC 7208 §4: one level of check_host().
    async fn check_host(&mut self, domain: &str, depth: u32, reach: Reach) -> Result<Level, Stop> {
        let none = || Level { result: SpfResult::None, decision: None, exp: None };
        // §4.3: a malformed or single-label domain gives none without a query.
        if !is_valid_domain(domain) {
            return Ok(none());
        }
        if depth > MAX_DEPTH {
            return Err(Stop(SpfResult::PermError, "include/redirect nesting too deep".into()));
        }
        // §4.4: TXT records only; a timeout or SERVFAIL is a temperror, NXDOMAIN is none.
        let txts = match self.resolver.txt(domain).await? {
            Answer::Records(r) => r,
            Answer::NoData | Answer::NxDomain => return Ok(none()),
        };
        let selected = record::select(txts.iter().map(Vec::as_slice));
        let raw = match selected.as_slice() {
            [] => return Ok(none()),
            [one] => *one,
            _ => return Err(Stop(SpfResult::PermError, format!("more than one SPF record at {domain}"))),
        };
        let text = String::from_utf8_lossy(raw).into_owned();
        self.records.push(EvaluatedRecord { domain: domain.to_string(), record: text.clone(), reached_by: reach });
        let record = Record::parse(raw).map_err(|e| Stop(SpfResult::PermError, format!("{domain}: {e}")))?;

        for directive in &record.directives {
            if directive.mechanism.queries_dns() {
                self.count_dns_term()?;
            }
            if self.matches(directive, domain, depth).await? {
                let result = match directive.qualifier {
                    Qualifier::Pass => SpfResult::Pass,
                    Qualifier::Fail => SpfResult::Fail,
                    Qualifier::SoftFail => SpfResult::SoftFail,
                    Qualifier::Neutral => SpfResult::Neutral,
                };
                let exp = if result == SpfResult::Fail { record.exp.clone().map(|e| (e, domain.to_string())) } else { None };
                let decision = Decision { domain: domain.to_string(), record: text, mechanism: directive.text.clone() };
                return Ok(Level { result, decision: Some(decision), exp });
            }
        }

        // §6.1: redirect only when no mechanism matched; the target's exp= replaces ours.
        if let Some(target) = &record.redirect {
            self.count_dns_term()?;
            let target = self.expand(target, domain).await?;
            let inner = Box::pin(self.check_host(&target, depth + 1, Reach::Redirect)).await?;
            if inner.result == SpfResult::None {
                return Err(Stop(SpfResult::PermError, format!("redirect={target} has no SPF record")));
            }
            return Ok(inner);
        }
        // §4.7: no match, no redirect.
        let decision = Decision { domain: domain.to_string(), record: text, mechanism: "default".into() };
        Ok(Level { result: SpfResult::Neutral, decision: Some(decision), exp: None })
    }

    /// RFC 7208 §5: does this mechanism match?
    async fn matches(&mut self, directive: &Directive, domain: &str, depth: u32) -> Result<bool, Stop> {
        let ip = self.params.ip;
        match &directive.mechanism {
            Mechanism::All => Ok(true),
            Mechanism::Ip4 { addr, prefix } => Ok(match ip {
                IpAddr::V4(v4) => in_prefix(u128::from(u32::from(v4)), u128::from(u32::from(*addr)), *prefix, 32),
                IpAddr::V6(_) => false,
            }),
            Mechanism::Ip6 { addr, prefix } => Ok(match ip {
                IpAddr::V6(v6) => in_prefix(u128::from(v6), u128::from(*addr), *prefix, 128),
                IpAddr::V4(_) => false,
            }),
            Mechanism::Include(spec) => {
                let target = self.expand(spec, domain).await?;
                // §5.2: pass matches; fail, softfail, neutral do not; temperror and permerror propagate;
                // none is a permerror.
                let inner = Box::pin(self.check_host(&target, depth + 1, Reach::Include)).await?;
                match inner.result {
                    SpfResult::Pass => Ok(true),
                    SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => Ok(false),
                    SpfResult::TempError => Err(Stop(SpfResult::TempError, format!("include:{target}: temperror"))),
                    SpfResult::PermError => Err(Stop(SpfResult::PermError, format!("include:{target}: permerror"))),
                    SpfResult::None => Err(Stop(SpfResult::PermError, format!("include:{target} has no SPF record"))),
                }
            }
            Mechanism::A { domain: spec, cidr4, cidr6 } => {
                let target = match spec {
                    Some(spec) => self.expand(spec, domain).await?,
                    None => domain.to_string(),
                };
                self.host_matches(&target, *cidr4, *cidr6, true).await
            }
            Mechanism::Mx { domain: spec, cidr4, cidr6 } => {
                let target = match spec {
                    Some(spec) => self.expand(spec, domain).await?,
                    None => domain.to_string(),
                };
                let mx = self.resolver.mx(&target).await?;
                self.count_void(&mx)?;
                let hosts = mx.records();
                if hosts.len() > MAX_NAMES_PER_LOOKUP {
                    return Err(Stop(SpfResult::PermError, format!("{target} has more than {MAX_NAMES_PER_LOOKUP} MX records")));
                }
                let mut hosts: Vec<_> = hosts.to_vec();
                hosts.sort_by_key(|m| m.preference);
                for host in hosts {
                    // A null MX (RFC 7505) names no host.
                    if host.exchange.is_empty() {
                        continue;
                    }
                    if self.host_matches(&host.exchange, *cidr4, *cidr6, false).await? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Mechanism::Ptr(spec) => {
                let target = match spec {
                    Some(spec) => self.expand(spec, domain).await?,
                    None => domain.to_string(),
                };
                let names = self.validated_names(Some(&target), true).await?;
                Ok(!names.is_empty())
            }
            Mechanism::Exists(spec) => {
                let target = self.expand(spec, domain).await?;
                // §5.7: always an A query, whatever the client's address family.
                let answer = self.resolver.a(&target).await?;
                self.count_void(&answer)?;
                Ok(!answer.is_void())
            }
        }
    }

    /// `a`, and each MX host: any address of `host` in the client's family within the prefix.
    /// `count_void` is true for the mechanism's own query (an MX host's lookup is not a term).
    async fn host_matches(&mut self, host: &str, cidr4: u8, cidr6: u8, count_void: bool) -> Result<bool, Stop> {
        match self.params.ip {
            IpAddr::V4(v4) => {
                let answer = self.resolver.a(host).await?;
                if count_void {
                    self.count_void(&answer)?;
                }
                let me = u128::from(u32::from(v4));
                Ok(answer.records().iter().any(|a| in_prefix(me, u128::from(u32::from(*a)), cidr4, 32)))
            }
            IpAddr::V6(v6) => {
                let answer = self.resolver.aaaa(host).await?;
                if count_void {
                    self.count_void(&answer)?;
                }
                let me = u128::from(v6);
                Ok(answer.records().iter().any(|a| in_prefix(me, u128::from(*a), cidr6, 128)))
            }
        }
    }

    /// RFC 7208 §5.5: the client's validated host names (PTR names whose A/AAAA records include the
    /// client), at most 10 PTR names looked at. With a target, only names equal to it or under it, and the
    /// search stops at the first. A PTR query that fails is no match, not a temperror; so is a failed
    /// address lookup of one name.
    async fn validated_names(&mut self, target: Option<&str>, count_void: bool) -> Result<Vec<String>, Stop> {
        let ptr = match self.resolver.ptr(self.params.ip).await {
            Ok(answer) => answer,
            Err(_) => return Ok(Vec::new()),
        };
        if count_void {
            self.count_void(&ptr)?;
        }
        let mut out = Vec::new();
        for name in ptr.records().iter().take(MAX_NAMES_PER_LOOKUP) {
            if let Some(t) = target
                && !is_same_or_under(name, t)
            {
                continue;
            }
            let confirmed = match self.params.ip {
                IpAddr::V4(v4) => matches!(self.resolver.a(name).await, Ok(a) if a.records().contains(&v4)),
                IpAddr::V6(v6) => matches!(self.resolver.aaaa(name).await, Ok(a) if a.records().contains(&v6)),
            };
            if confirmed {
                out.push(name.clone());
                if target.is_some() {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// `%{p}` (RFC 7208 §7.3): the domain itself if validated, else a validated subdomain of it, else any
    /// validated name, else "unknown" (None). Errors make it "unknown".
    async fn validated_name(&mut self, domain: &str) -> Option<String> {
        let names = self.validated_names(None, false).await.ok()?;
        names
            .iter()
            .find(|n| n.eq_ignore_ascii_case(domain))
            .or_else(|| names.iter().find(|n| is_same_or_under(n, domain)))
            .or_else(|| names.first())
            .cloned()
    }

    /// RFC 7208 §6.2: the explanation of a fail. Any problem (a macro error, a DNS error, no or several
    /// TXT records, a bad explain-string) means no explanation. Not counted against the limits.
    async fn explain(&mut self, exp: &MacroString, domain: &str) -> Option<String> {
        let validated = if exp.uses_ptr() { self.validated_name(domain).await } else { None };
        let target = exp.expand_domain(&self.ctx(domain, validated.as_deref()));
        if !is_dns_name(&target) {
            return None;
        }
        let txts = match self.resolver.txt(&target).await {
            Ok(Answer::Records(r)) => r,
            _ => return None,
        };
        let [one] = txts.as_slice() else { return None };
        let text = std::str::from_utf8(one).ok()?;
        let string = MacroString::parse_explanation(text).ok()?;
        let validated = if string.uses_ptr() { self.validated_name(domain).await } else { None };
        Some(string.expand(&self.ctx(domain, validated.as_deref())))
    }
}

/// `name` equals `target` or ends with `.target` (case-insensitive, trailing dots ignored).
fn is_same_or_under(name: &str, target: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    let target = target.strip_suffix('.').unwrap_or(target);
    if name.len() < target.len() {
        return false;
    }
    let (head, tail) = name.split_at(name.len() - target.len());
    tail.eq_ignore_ascii_case(target) && (head.is_empty() || head.ends_with('.'))
}

fn in_prefix(a: u128, b: u128, prefix: u8, bits: u8) -> bool {
    let prefix = prefix.min(bits);
    if prefix == 0 {
        return true;
    }
    let shift = u32::from(bits - prefix);
    (a >> shift) == (b >> shift)
}

/// RFC 7208 §4.3: a domain check_host() may look up: a possible DNS name with at least two labels, and
/// not an address literal.
pub(crate) fn is_valid_domain(domain: &str) -> bool {
    let d = domain.strip_suffix('.').unwrap_or(domain);
    is_dns_name(d) && d.contains('.') && !d.starts_with('[') && d.parse::<IpAddr>().is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert!(in_prefix(0x0102_0304, 0x0102_0305, 24, 32));
        assert!(!in_prefix(0x0102_0304, 0x0102_0305, 32, 32));
        assert!(in_prefix(1, u128::MAX, 0, 128));
    }

    #[test]
    fn subdomain_match_is_label_aligned_and_case_blind() {
        assert!(is_same_or_under("mail.Example.com", "example.COM"));
        assert!(is_same_or_under("example.com.", "example.com"));
        assert!(!is_same_or_under("badexample.com", "example.com"));
    }

    #[test]
    fn initial_domain_validation() {
        assert!(is_valid_domain("example.com"));
        assert!(!is_valid_domain("A2345678"));
        assert!(!is_valid_domain("[1.2.3.5]"));
        assert!(!is_valid_domain("A...example.com"));
        assert!(!is_valid_domain("1.2.3.4"));
    }
}
