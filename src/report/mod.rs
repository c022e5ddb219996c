//! Outgoing SPF failure reports (RFC 6591 over RFC 6652 discovery): deciding whether a failed check is
//! reported ([`plan`], pure), building and signing the report ([`arf`], [`dkim`]), and the safety rules
//! that keep rebound from becoming a backscatter or amplification source: the kill switch, allow/deny
//! lists, never to our own domains, never for mail from our own networks, the domain's `rr=` and `rp=`,
//! and (in the database, see `store::spf`) the per-address rate, the global hourly cap and the
//! suppression of addresses our reports bounced from.

pub mod arf;
pub mod config;
pub mod discovery;
pub mod dkim;
pub mod queue;
pub mod sender;

use std::net::IpAddr;

use crate::spf::IdentityCheck;
use crate::spf::config::Network;
use config::ReportSpfConfig;
use discovery::ReportRequest;

/// Why a failed check is not reported (the first rule that said no).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Reports are switched off.
    Disabled,
    /// The domain publishes no (valid) `ra=`.
    NotRequested,
    /// The domain's `rr=` excludes this result.
    ResultNotWanted,
    /// The domain's `rp=` sampling left this one out.
    Sampled,
    /// The address is one of our own domains.
    OwnDomain,
    /// The mail came from our own network.
    OwnNetwork,
    /// The address is on the deny list, or not on a non-empty allow list.
    Denied,
}

/// A report to queue, if the database limits allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// What the domain asked for.
    pub request: ReportRequest,
}

/// The safety rules that need no database, applied in a fixed order. `sample` is a number in 0..100
/// drawn by the caller (tests pass fixed values).
pub fn plan(
    check: &IdentityCheck,
    client_ip: IpAddr,
    config: &ReportSpfConfig,
    own_networks: &[Network],
    sample: u8,
) -> Result<Planned, Skip> {
    if !config.enabled {
        return Err(Skip::Disabled);
    }
    if own_networks.iter().any(|n| n.contains(client_ip)) {
        return Err(Skip::OwnNetwork);
    }
    let request = discovery::find(&check.outcome.records).ok_or(Skip::NotRequested)?;
    if !request.wants(check.result()) {
        return Err(Skip::ResultNotWanted);
    }
    let address_domain = request.address.rsplit_once('@').map_or("", |(_, d)| d).to_string();
    if config.own_domains.iter().any(|d| in_domain(&address_domain, d)) {
        return Err(Skip::OwnDomain);
    }
    if config.deny.iter().any(|d| in_domain(&address_domain, d))
        || (!config.allow.is_empty() && !config.allow.iter().any(|d| in_domain(&address_domain, d)))
    {
        return Err(Skip::Denied);
    }
    if sample >= request.percent {
        return Err(Skip::Sampled);
    }
    Ok(Planned { request })
}

/// `name` is `domain` or under it (case-insensitive; a leading `*.` or `.` in `domain` is ignored).
fn in_domain(name: &str, domain: &str) -> bool {
    let domain = domain.trim_start_matches("*.").trim_start_matches('.').trim_end_matches('.');
    let name = name.trim_end_matches('.');
    if domain.is_empty() || name.len() < domain.len() {
        return false;
    }
    let (head, tail) = name.split_at(name.len() - domain.len());
    tail.eq_ignore_ascii_case(domain) && (head.is_empty() || head.ends_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spf::{Decision, EvaluatedRecord, Identity, Outcome, Reach, SpfResult};

    fn failed(record: &str) -> IdentityCheck {
        IdentityCheck {
            identity: Identity::MailFrom,
            sender: "someone@example.com".into(),
            outcome: Outcome {
                result: SpfResult::Fail,
                domain: "example.com".into(),
                decision: Some(Decision { domain: "example.com".into(), record: record.into(), mechanism: "-all".into() }),
                explanation: None,
                problem: None,
                records: vec![EvaluatedRecord { domain: "example.com".into(), record: record.into(), reached_by: Reach::Top }],
                dns_terms: 0,
                void_lookups: 0,
            },
        }
    }

    fn on() -> ReportSpfConfig {
        ReportSpfConfig { enabled: true, from_address: "reports@ours.example".into(), ..ReportSpfConfig::default() }
    }

    #[test]
    fn each_safety_rule_can_say_no() {
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let check = failed("v=spf1 -all ra=spf rp=50 rr=f");
        assert_eq!(plan(&check, ip, &on(), &[], 10).unwrap().request.address, "spf@example.com");
        assert_eq!(plan(&check, ip, &ReportSpfConfig::default(), &[], 10), Err(Skip::Disabled));
        assert_eq!(plan(&check, ip, &on(), &[], 60), Err(Skip::Sampled));
        assert_eq!(plan(&failed("v=spf1 -all"), ip, &on(), &[], 0), Err(Skip::NotRequested));
        assert_eq!(plan(&failed("v=spf1 -all ra=spf rr=s"), ip, &on(), &[], 0), Err(Skip::ResultNotWanted));
        let own = ReportSpfConfig { own_domains: vec!["example.com".into()], ..on() };
        assert_eq!(plan(&check, ip, &own, &[], 0), Err(Skip::OwnDomain));
        let deny = ReportSpfConfig { deny: vec!["*.com".into()], ..on() };
        assert_eq!(plan(&check, ip, &deny, &[], 0), Err(Skip::Denied));
        let allow = ReportSpfConfig { allow: vec!["example.org".into()], ..on() };
        assert_eq!(plan(&check, ip, &allow, &[], 0), Err(Skip::Denied));
        let net: Network = "203.0.113.0/24".parse().unwrap();
        assert_eq!(plan(&check, ip, &on(), &[net], 0), Err(Skip::OwnNetwork));
    }
}
