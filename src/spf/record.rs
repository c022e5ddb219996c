//! SPF records: selecting the one record of a domain (RFC 7208 §4.5) and parsing it strictly (§4.6, §12).
//! Any syntax error anywhere in the record is a `permerror` before anything is evaluated.
//!
//! ```text
//! record           = version terms *SP
//! version          = "v=spf1"
//! terms            = *( 1*SP ( directive / modifier ) )
//! directive        = [ qualifier ] mechanism
//! qualifier        = "+" / "-" / "?" / "~"
//! mechanism        = ( all / include / a / mx / ptr / ip4 / ip6 / exists )
//! all              = "all"
//! include          = "include"  ":" domain-spec
//! a                = "a"      [ ":" domain-spec ] [ dual-cidr-length ]
//! mx               = "mx"     [ ":" domain-spec ] [ dual-cidr-length ]
//! ptr              = "ptr"    [ ":" domain-spec ]
//! ip4              = "ip4"      ":" ip4-network   [ ip4-cidr-length ]
//! ip6              = "ip6"      ":" ip6-network   [ ip6-cidr-length ]
//! exists           = "exists"   ":" domain-spec
//! modifier         = redirect / explanation / unknown-modifier
//! redirect         = "redirect" "=" domain-spec
//! explanation      = "exp" "=" domain-spec
//! unknown-modifier = name "=" macro-string
//! name             = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." )
//! dual-cidr-length = [ ip4-cidr-length ] [ "/" ip6-cidr-length ]
//! ip4-cidr-length  = "/" ("0" / %x31-39 0*1DIGIT)   ; 0..32
//! ip6-cidr-length  = "/" ("0" / %x31-39 0*2DIGIT)   ; 0..128
//! ```

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::macros::{MacroError, MacroString};

/// A directive's qualifier and the result it gives on a match (RFC 7208 §4.6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qualifier {
    /// `+` (the default): pass.
    Pass,
    /// `-`: fail.
    Fail,
    /// `~`: softfail.
    SoftFail,
    /// `?`: neutral.
    Neutral,
}

/// A mechanism (RFC 7208 §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    /// `all`.
    All,
    /// `include:<domain-spec>`.
    Include(MacroString),
    /// `a[:<domain-spec>][/cidr4][//cidr6]`.
    A {
        /// Target, the current domain when absent.
        domain: Option<MacroString>,
        /// IPv4 prefix length (32 by default).
        cidr4: u8,
        /// IPv6 prefix length (128 by default).
        cidr6: u8,
    },
    /// `mx[:<domain-spec>][/cidr4][//cidr6]`.
    Mx {
        /// Target, the current domain when absent.
        domain: Option<MacroString>,
        /// IPv4 prefix length (32 by default).
        cidr4: u8,
        /// IPv6 prefix length (128 by default).
        cidr6: u8,
    },
    /// `ptr[:<domain-spec>]`.
    Ptr(Option<MacroString>),
    /// `ip4:<network>[/cidr]`.
    Ip4 {
        /// The network address.
        addr: Ipv4Addr,
        /// Prefix length.
        prefix: u8,
    },
    /// `ip6:<network>[/cidr]`.
    Ip6 {
        /// The network address.
        addr: Ipv6Addr,
        /// Prefix length.
        prefix: u8,
    },
    /// `exists:<domain-spec>`.
    Exists(MacroString),
}

impl Mechanism {
    /// True for the mechanisms that count against the limit of 10 DNS-querying terms (RFC 7208 §4.6.4).
    pub fn queries_dns(&self) -> bool {
        matches!(self, Mechanism::Include(_) | Mechanism::A { .. } | Mechanism::Mx { .. } | Mechanism::Ptr(_) | Mechanism::Exists(_))
    }
}

/// A qualifier and a mechanism, with the term as written (shown as "the mechanism that matched").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// The qualifier.
    pub qualifier: Qualifier,
    /// The mechanism.
    pub mechanism: Mechanism,
    /// The term exactly as it stood in the record.
    pub text: String,
}

/// A parsed SPF record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The directives, in order.
    pub directives: Vec<Directive>,
    /// `redirect=`.
    pub redirect: Option<MacroString>,
    /// `exp=`.
    pub exp: Option<MacroString>,
}

/// Why a record is a `permerror`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Bytes outside 7-bit ASCII (RFC 7208 §3.1).
    #[error("the record is not 7-bit ASCII")]
    NotAscii,
    /// A term that is neither a known mechanism nor a well-formed modifier.
    #[error("unknown or malformed term {0:?}")]
    BadTerm(String),
    /// A mechanism with a bad argument.
    #[error("malformed mechanism {term:?}: {reason}")]
    BadMechanism {
        /// The term.
        term: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// `redirect=` or `exp=` given twice (RFC 7208 §6).
    #[error("modifier {0:?} appears more than once")]
    DuplicateModifier(String),
    /// A macro-string or domain-spec that breaks §7.1.
    #[error(transparent)]
    Macro(#[from] MacroError),
}

/// Which of a domain's TXT records are SPF records (RFC 7208 §4.5): those that begin with `v=spf1`
/// (any case) followed by a space or the end.
pub fn select<'a>(txts: impl IntoIterator<Item = &'a [u8]>) -> Vec<&'a [u8]> {
    txts.into_iter()
        .filter(|t| {
            t.len() >= 6 && t[..6].eq_ignore_ascii_case(b"v=spf1") && (t.len() == 6 || t[6] == b' ')
        })
        .collect()
}

impl Record {
    /// Parses a record that [`select`] picked.
    pub fn parse(raw: &[u8]) -> Result<Record, RecordError> {
        if !raw.is_ascii() {
            return Err(RecordError::NotAscii);
        }
        let text = std::str::from_utf8(raw).map_err(|_| RecordError::NotAscii)?;
        let mut terms = text.split(' ').filter(|t| !t.is_empty());
        match terms.next() {
            Some(v) if v.eq_ignore_ascii_case("v=spf1") => {}
            other => return Err(RecordError::BadTerm(other.unwrap_or_default().to_string())),
        }
        let mut record = Record { directives: Vec::new(), redirect: None, exp: None };
        for term in terms {
            record.add_term(term)?;
        }
        Ok(record)
    }

    fn add_term(&mut self, term: &str) -> Result<(), RecordError> {
        let name_len = modifier_name_len(term);
        if name_len > 0 && term.as_bytes().get(name_len) == Some(&b'=') {
            let name = &term[..name_len];
            let value = &term[name_len + 1..];
            let slot = if name.eq_ignore_ascii_case("redirect") {
                Some(&mut self.redirect)
            } else if name.eq_ignore_ascii_case("exp") {
                Some(&mut self.exp)
            } else {
                None
            };
            return match slot {
                Some(slot) => {
                    if slot.is_some() {
                        return Err(RecordError::DuplicateModifier(name.to_ascii_lowercase()));
                    }
                    *slot = Some(domain_spec(term, value)?);
                    Ok(())
                }
                // Unknown modifiers are ignored, but must still be well-formed (RFC 7208 §6).
                None => MacroString::parse(value).map(|_| ()).map_err(RecordError::from),
            };
        }
        let (qualifier, rest) = match term.as_bytes().first() {
            Some(b'+') => (Qualifier::Pass, &term[1..]),
            Some(b'-') => (Qualifier::Fail, &term[1..]),
            Some(b'~') => (Qualifier::SoftFail, &term[1..]),
            Some(b'?') => (Qualifier::Neutral, &term[1..]),
            _ => (Qualifier::Pass, term),
        };
        let mechanism = parse_mechanism(term, rest)?;
        self.directives.push(Directive { qualifier, mechanism, text: term.to_string() });
        Ok(())
    }
}

/// Length of a leading `name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." )`, 0 when there is none.
fn modifier_name_len(term: &str) -> usize {
    let b = term.as_bytes();
    if !b.first().is_some_and(u8::is_ascii_alphabetic) {
        return 0;
    }
    b.iter().take_while(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c)).count()
}

fn domain_spec(term: &str, value: &str) -> Result<MacroString, RecordError> {
    if value.is_empty() {
        return Err(RecordError::BadMechanism { term: term.to_string(), reason: "empty domain-spec" });
    }
    let m = MacroString::parse(value)?;
    if !m.is_domain_spec() {
        return Err(RecordError::BadMechanism { term: term.to_string(), reason: "domain-spec must end in a macro or a valid top label" });
    }
    Ok(m)
}

fn parse_mechanism(term: &str, rest: &str) -> Result<Mechanism, RecordError> {
    let name_end = rest.find([':', '/']).unwrap_or(rest.len());
    let (name, arg) = rest.split_at(name_end);
    let bad = |reason| RecordError::BadMechanism { term: term.to_string(), reason };
    let name = name.to_ascii_lowercase();
    match name.as_str() {
        "all" => {
            if !arg.is_empty() {
                return Err(bad("all takes no argument"));
            }
            Ok(Mechanism::All)
        }
        "include" | "exists" => {
            let value = arg.strip_prefix(':').ok_or_else(|| bad("needs ':' and a domain-spec"))?;
            let spec = domain_spec(term, value)?;
            Ok(if name == "include" { Mechanism::Include(spec) } else { Mechanism::Exists(spec) })
        }
        "ptr" => {
            if arg.is_empty() {
                return Ok(Mechanism::Ptr(None));
            }
            let value = arg.strip_prefix(':').ok_or_else(|| bad("ptr takes no prefix length"))?;
            Ok(Mechanism::Ptr(Some(domain_spec(term, value)?)))
        }
        "a" | "mx" => {
            let (spec, cidr4, cidr6) = dual_cidr(arg).ok_or_else(|| bad("bad prefix length"))?;
            let domain = if spec.is_empty() {
                None
            } else {
                let value = spec.strip_prefix(':').ok_or_else(|| bad("unexpected text after the mechanism name"))?;
                Some(domain_spec(term, value)?)
            };
            Ok(if name == "a" { Mechanism::A { domain, cidr4, cidr6 } } else { Mechanism::Mx { domain, cidr4, cidr6 } })
        }
        "ip4" => {
            let value = arg.strip_prefix(':').ok_or_else(|| bad("needs ':' and a network"))?;
            let (net, prefix) = match value.split_once('/') {
                Some((net, p)) => (net, cidr_len(p, 32).ok_or_else(|| bad("bad prefix length"))?),
                None => (value, 32),
            };
            let addr = net.parse::<Ipv4Addr>().map_err(|_| bad("not a dotted-quad IPv4 address"))?;
            Ok(Mechanism::Ip4 { addr, prefix })
        }
        "ip6" => {
            let value = arg.strip_prefix(':').ok_or_else(|| bad("needs ':' and a network"))?;
            let (net, prefix) = match value.split_once('/') {
                Some((net, p)) => (net, cidr_len(p, 128).ok_or_else(|| bad("bad prefix length"))?),
                None => (value, 128),
            };
            let addr = net.parse::<Ipv6Addr>().map_err(|_| bad("not an IPv6 address"))?;
            Ok(Mechanism::Ip6 { addr, prefix })
        }
        _ => Err(RecordError::BadTerm(term.to_string())),
    }
}

/// A prefix length: digits without a leading zero (except "0" itself), at most `max`.
fn cidr_len(s: &str, max: u8) -> Option<u8> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    let n: u8 = s.parse().ok()?;
    (n <= max).then_some(n)
}

/// Splits `[":" domain-spec] [dual-cidr-length]` into the part before the lengths and the two lengths.
/// `None` when a length is malformed or out of range.
fn dual_cidr(arg: &str) -> Option<(&str, u8, u8)> {
    let mut rest = arg;
    let mut cidr6 = 128;
    let mut cidr4 = 32;
    if let Some(pos) = rest.rfind("//") {
        let digits = &rest[pos + 2..];
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            cidr6 = cidr_len(digits, 128)?;
            rest = &rest[..pos];
        }
    }
    if let Some(pos) = rest.rfind('/') {
        let digits = &rest[pos + 1..];
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            cidr4 = cidr_len(digits, 32)?;
            rest = &rest[..pos];
        }
    }
    // Anything left that starts with '/' is a malformed length (e.g. "a/24/64", "a//").
    if rest.starts_with('/') {
        return None;
    }
    Some((rest, cidr4, cidr6))
}

impl fmt::Display for Qualifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Qualifier::Pass => "+",
            Qualifier::Fail => "-",
            Qualifier::SoftFail => "~",
            Qualifier::Neutral => "?",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(r: &str) -> bool {
        Record::parse(r.as_bytes()).is_err()
    }

    #[test]
    fn selection_needs_v_spf1_then_space_or_end() {
        let txts: Vec<&[u8]> = vec![b"v=spf1 -all", b"v=spf10", b"V=SpF1", b"v=spf1mx", b"other"];
        assert_eq!(select(txts), vec![&b"v=spf1 -all"[..], &b"V=SpF1"[..]]);
    }

    #[test]
    fn strict_syntax_errors_are_caught_anywhere() {
        for bad in [
            "v=spf1 ip4:1.2.3.4 -all moo",
            "v=spf1 moo.cow/far_out=man:dog/cat ip4:1.2.3.4 -all",
            "v=spf1 ip4:1.2.3.4 redirect:t2.example.com",
            "v=spf1 -all.",
            "v=spf1 -all:foobar",
            "v=spf1 -all/8",
            "v=spf1 ptr/0 -all",
            "v=spf1 ptr:",
            "v=spf1 a/33 -all",
            "v=spf1 a//129 -all",
            "v=spf1 a/24/64 -all",
            "v=spf1 a:example.com:8080",
            "v=spf1 a:museum",
            "v=spf1 a:abc.123",
            "v=spf1 a:",
            "v=spf1 include",
            "v=spf1 include:ip5.example.com/24 -all",
            "v=spf1 exists:mail.example.com/24",
            "v=spf1 ip4:1.2.3.4/33 -all",
            "v=spf1 ip4:1.2.3.4/032 -all",
            "v=spf1 ip4",
            "v=spf1 ip4:1.2.3.4:8080",
            "v=spf1 ip4:1.2.3",
            "v=spf1 ip4:1.2.3.4//32",
            "v=spf1 ip6:::1.1.1.1/129",
            "v=spf1 ip6:::1.1.1.1//33",
            "v=spf1 ip6::CAFE::BABE",
            "v=spf1 1up=foo",
            "v=spf1 =all",
            "v=spf1 -all foo=%abc",
            "v=spf1 exp= -all",
            "v=spf1 exp=-all",
            "v=spf1 redirect=-all ?all",
            "v=spf1 exp=a.example.com -all exp=b.example.com",
            "v=spf1 redirect=a.example.com -all redirect=a.example.com",
            "v=spf1 a:ctrl.example.com\rptr -all",
            "v=spf1 a:foo.example.com\0",
        ] {
            assert!(perm(bad), "{bad:?} should be a permerror");
        }
        assert_eq!(Record::parse(b"v=spf1 a:\xEF\xBB\xBFx.example.net -all"), Err(RecordError::NotAscii));
    }

    #[test]
    fn valid_records_parse() {
        for good in [
            "v=spf1",
            "v=spf1 a  -all ",
            "v=spf1 moo.cow-far_out=man:dog/cat ip4:1.2.3.4 -all",
            "v=spf1 default=+",
            "v=spf1 a/24//64 a//0 mx/0 mx:foo:bar/baz.example.com ip6:Cafe:Babe:8000::/33",
            "v=spf1 a:foo.example.xn--zckzah -all",
            "v=spf1 exists:%{i}.%{l2r-}.user.%{d2} -include:_spfh.%{d2}",
            "V=SPF1 REDIRECT=example.com",
        ] {
            assert!(!perm(good), "{good:?} should parse");
        }
        let r = Record::parse(b"v=spf1 a/24//64 -all").unwrap();
        assert_eq!(r.directives[0].mechanism, Mechanism::A { domain: None, cidr4: 24, cidr6: 64 });
        assert_eq!(r.directives[1].qualifier, Qualifier::Fail);
    }
}
