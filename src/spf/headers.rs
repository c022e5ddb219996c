//! The result headers: `Received-SPF` (RFC 7208 §9.1) and `Authentication-Results` (RFC 8601 §2.7.2).
//! Everything that came from the client (HELO, MAIL FROM) is made safe: no CR/LF or other control
//! characters, non-ASCII replaced, values quoted where they are not dot-atoms.

use std::net::IpAddr;

use super::{Identity, IdentityCheck, SpfResult};

/// The comment RFC 7208 §9.1's examples use for each result.
fn comment(check: &IdentityCheck, ip: IpAddr, receiver: &str) -> String {
    let sender = &check.sender;
    let text = match check.outcome.result {
        SpfResult::Pass => format!("domain of {sender} designates {ip} as permitted sender"),
        SpfResult::Fail => format!("domain of {sender} does not designate {ip} as permitted sender"),
        SpfResult::SoftFail => format!("transitioning domain of {sender} does not designate {ip} as permitted sender"),
        SpfResult::Neutral => format!("{ip} is neither permitted nor denied by domain of {sender}"),
        SpfResult::None => format!("domain of {sender} does not provide an SPF record"),
        SpfResult::TempError => format!("error in processing during lookup of {sender}"),
        SpfResult::PermError => format!("domain of {sender} has an invalid SPF record"),
    };
    format!("({}: {})", clean_comment(receiver), clean_comment(&text))
}

/// A `Received-SPF:` header line (name included, no line break) for one identity's check.
pub fn received_spf(check: &IdentityCheck, ip: IpAddr, helo: &str, receiver: &str) -> String {
    let mut out = format!("Received-SPF: {} {}", check.outcome.result, comment(check, ip, receiver));
    out.push_str(&format!(" client-ip={};", ip.to_canonical()));
    let envelope_from = match check.identity {
        Identity::Helo => None,
        Identity::MailFrom => Some(check.sender.as_str()),
    };
    if let Some(from) = envelope_from {
        out.push_str(&format!(" envelope-from={};", quoted(from)));
    }
    if !helo.is_empty() {
        out.push_str(&format!(" helo={};", value(helo)));
    }
    if let Some(d) = &check.outcome.decision {
        out.push_str(&format!(" mechanism={};", value(&d.mechanism)));
    }
    if let (Some(problem), SpfResult::TempError | SpfResult::PermError) = (&check.outcome.problem, check.outcome.result) {
        out.push_str(&format!(" problem={};", quoted(problem)));
    }
    out.push_str(&format!(" receiver={}; identity={}", value(receiver), check.identity.as_str()));
    out
}

/// An `Authentication-Results:` header line (name included, no line break) with one `spf=` result per
/// identity given, HELO first.
pub fn authentication_results(auth_serv_id: &str, checks: &[&IdentityCheck]) -> String {
    let mut out = format!("Authentication-Results: {}", value(auth_serv_id));
    if checks.is_empty() {
        out.push_str("; none");
        return out;
    }
    for check in checks {
        let property = match check.identity {
            Identity::Helo => {
                let helo = check.sender.strip_prefix("postmaster@").unwrap_or(&check.sender);
                format!("smtp.helo={}", value(helo))
            }
            Identity::MailFrom => format!("smtp.mailfrom={}", value(&check.sender)),
        };
        out.push_str(&format!("; spf={} {}", check.outcome.result, property));
    }
    out
}

/// Replaces control characters and non-ASCII with `?` (what came from DNS or a client could hold anything).
pub(crate) fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect()
}

fn clean_comment(s: &str) -> String {
    let mut out = String::new();
    for c in printable(s).chars() {
        if matches!(c, '(' | ')' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// RFC 5322 quoted-string of the [`printable`] text.
pub(crate) fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in printable(s).chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A dot-atom (with `@` allowed, as RFC 8601 pvalues allow `local@domain`) as is, else quoted.
fn value(s: &str) -> String {
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.@".contains(c);
    if !s.is_empty() && s.chars().all(atext) && !s.starts_with('.') && !s.ends_with('.') {
        s.to_string()
    } else {
        quoted(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spf::{Decision, Outcome};

    fn check(identity: Identity, sender: &str, result: SpfResult) -> IdentityCheck {
        IdentityCheck {
            identity,
            sender: sender.into(),
            outcome: Outcome {
                result,
                domain: "example.com".into(),
                decision: Some(Decision { domain: "example.com".into(), record: "v=spf1 -all".into(), mechanism: "-all".into() }),
                explanation: None,
                problem: None,
                records: vec![],
                dns_terms: 0,
                void_lookups: 0,
            },
        }
    }

    #[test]
    fn received_spf_follows_rfc_7208_9_1() {
        let c = check(Identity::MailFrom, "myname@example.com", SpfResult::Fail);
        let h = received_spf(&c, "192.0.2.1".parse().unwrap(), "foo.example.com", "mybox.example.org");
        assert_eq!(
            h,
            "Received-SPF: fail (mybox.example.org: domain of myname@example.com does not designate 192.0.2.1 \
             as permitted sender) client-ip=192.0.2.1; envelope-from=\"myname@example.com\"; helo=foo.example.com; \
             mechanism=-all; receiver=mybox.example.org; identity=mailfrom"
        );
    }

    #[test]
    fn hostile_values_cannot_break_the_header() {
        let c = check(Identity::MailFrom, "a\r\nX-Evil: 1@example.com", SpfResult::Pass);
        let h = received_spf(&c, "192.0.2.1".parse().unwrap(), "x)\r\n(y", "mx");
        assert!(!h.contains('\r') && !h.contains('\n'), "{h}");
        let a = authentication_results("mx\n.example", &[&c]);
        assert!(!a.contains('\n'), "{a}");
    }

    #[test]
    fn authentication_results_lists_both_identities() {
        let helo = check(Identity::Helo, "postmaster@mail.example.com", SpfResult::None);
        let from = check(Identity::MailFrom, "user@example.com", SpfResult::Pass);
        assert_eq!(
            authentication_results("mx.example.org", &[&helo, &from]),
            "Authentication-Results: mx.example.org; spf=none smtp.helo=mail.example.com; spf=pass smtp.mailfrom=user@example.com"
        );
    }
}
