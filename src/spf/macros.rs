//! SPF macros (RFC 7208 §7): parsing macro-strings strictly, and expanding them.
//!
//! ```text
//! macro-string  = *( macro-expand / macro-literal )
//! macro-expand  = ( "%{" macro-letter transformers *delimiter "}" ) / "%%" / "%_" / "%-"
//! macro-literal = %x21-24 / %x26-7E          ; visible characters except "%"
//! macro-letter  = "s" / "l" / "o" / "d" / "i" / "p" / "h" / "c" / "r" / "t" / "v"
//! transformers  = *DIGIT [ "r" ]
//! delimiter     = "." / "-" / "+" / "," / "/" / "_" / "="
//! explain-string = *( macro-string / SP )
//! ```

use std::net::IpAddr;

/// A macro letter (RFC 7208 §7.2). `c`, `r` and `t` are allowed only in explanation strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Letter {
    /// `s`: the sender (`local-part@domain`).
    Sender,
    /// `l`: the sender's local-part.
    Local,
    /// `o`: the sender's domain.
    SenderDomain,
    /// `d`: the current domain.
    Domain,
    /// `i`: the client IP, dotted (IPv4) or as 32 dotted nibbles (IPv6).
    Ip,
    /// `p`: the validated domain name of the client IP (discouraged, needs DNS).
    Ptr,
    /// `v`: `in-addr` or `ip6`.
    Version,
    /// `h`: the HELO/EHLO domain.
    Helo,
    /// `c`: the client IP in readable form (explanations only).
    ClientIp,
    /// `r`: the receiving host's name (explanations only).
    Receiver,
    /// `t`: the current timestamp (explanations only).
    Timestamp,
}

impl Letter {
    fn from_byte(b: u8, explanation: bool) -> Option<Letter> {
        Some(match b.to_ascii_lowercase() {
            b's' => Letter::Sender,
            b'l' => Letter::Local,
            b'o' => Letter::SenderDomain,
            b'd' => Letter::Domain,
            b'i' => Letter::Ip,
            b'p' => Letter::Ptr,
            b'v' => Letter::Version,
            b'h' => Letter::Helo,
            b'c' if explanation => Letter::ClientIp,
            b'r' if explanation => Letter::Receiver,
            b't' if explanation => Letter::Timestamp,
            _ => return None,
        })
    }
}

/// One piece of a macro-string.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Literal text (with `%%`, `%_`, `%-` already replaced by `%`, space, `%20`).
    Literal(String),
    /// `%{...}`.
    Macro {
        letter: Letter,
        /// Keep this many right-hand parts (never 0).
        keep: Option<usize>,
        reverse: bool,
        /// Split on these (default ".").
        delimiters: Vec<u8>,
        /// Upper-case letter: URL-escape the result.
        escape: bool,
    },
}

/// A parsed macro-string, ready to expand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacroString {
    pieces: Vec<Piece>,
    /// True when the last piece is a macro-expand (`%{..}`, `%%`, `%_`, `%-`), see domain-end in §7.1.
    ends_with_macro: bool,
}

/// A macro-string that does not follow RFC 7208 §7.1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid macro-string {text:?}: {reason}")]
pub struct MacroError {
    /// The text.
    pub text: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// Everything a macro can refer to.
#[derive(Debug, Clone)]
pub struct MacroContext<'a> {
    /// `<sender>`'s local-part.
    pub local: &'a str,
    /// `<sender>`'s domain.
    pub sender_domain: &'a str,
    /// The current domain.
    pub domain: &'a str,
    /// The client IP (an IPv4-mapped IPv6 address already turned into IPv4).
    pub ip: IpAddr,
    /// The HELO/EHLO domain as given.
    pub helo: &'a str,
    /// The receiving host's name.
    pub receiver: &'a str,
    /// The validated domain name of the client, when a `p` macro needs it (else "unknown").
    pub validated: Option<&'a str>,
    /// Seconds since the epoch.
    pub timestamp: i64,
}

impl MacroString {
    /// Parses a macro-string from a record (no spaces; `c`, `r`, `t` not allowed).
    pub fn parse(text: &str) -> Result<MacroString, MacroError> {
        Self::parse_with(text, false)
    }

    /// Parses an explanation string (spaces and the `c`, `r`, `t` letters allowed, RFC 7208 §6.2).
    pub fn parse_explanation(text: &str) -> Result<MacroString, MacroError> {
        Self::parse_with(text, true)
    }

    fn parse_with(text: &str, explanation: bool) -> Result<MacroString, MacroError> {
        let err = |reason| MacroError { text: text.to_string(), reason };
        let b = text.as_bytes();
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut ends_with_macro = false;
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            if c != b'%' {
                let ok = (0x21..=0x7e).contains(&c) || (explanation && c == b' ');
                if !ok {
                    return Err(err("character outside the visible ASCII range"));
                }
                lit.push(char::from(c));
                ends_with_macro = false;
                i += 1;
                continue;
            }
            ends_with_macro = true;
            match b.get(i + 1) {
                Some(b'%') => lit.push('%'),
                Some(b'_') => lit.push(' '),
                Some(b'-') => lit.push_str("%20"),
                Some(b'{') => {
                    let close = b[i + 2..].iter().position(|&x| x == b'}').ok_or_else(|| err("unclosed %{"))?;
                    let inner = &b[i + 2..i + 2 + close];
                    let (&l, rest) = inner.split_first().ok_or_else(|| err("empty %{}"))?;
                    let letter = Letter::from_byte(l, explanation).ok_or_else(|| err("unknown macro letter"))?;
                    let digits = rest.iter().take_while(|x| x.is_ascii_digit()).count();
                    let keep = if digits > 0 {
                        let n = std::str::from_utf8(&rest[..digits])
                            .ok()
                            .and_then(|s| s.parse::<usize>().ok())
                            .unwrap_or(usize::MAX);
                        if n == 0 {
                            return Err(err("a macro transformer of 0 parts"));
                        }
                        Some(n)
                    } else {
                        None
                    };
                    let mut rest = &rest[digits..];
                    let reverse = matches!(rest.first(), Some(b'r' | b'R'));
                    if reverse {
                        rest = &rest[1..];
                    }
                    if !rest.iter().all(|x| b".-+,/_=".contains(x)) {
                        return Err(err("bad macro transformer or delimiter"));
                    }
                    if !lit.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Macro {
                        letter,
                        keep,
                        reverse,
                        delimiters: rest.to_vec(),
                        escape: l.is_ascii_uppercase(),
                    });
                    i += 2 + close + 1;
                    continue;
                }
                _ => return Err(err("'%' not followed by '{', '%', '_' or '-'")),
            }
            i += 2;
        }
        if !lit.is_empty() {
            pieces.push(Piece::Literal(lit));
        }
        Ok(MacroString { pieces, ends_with_macro })
    }

    /// True when expanding needs the validated domain name (`%{p}`), which costs DNS queries.
    pub fn uses_ptr(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Macro { letter: Letter::Ptr, .. }))
    }

    /// True when the string is empty.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Checks the domain-spec rule of RFC 7208 §7.1 / §12:
    /// `domain-spec = macro-string domain-end`, `domain-end = ( "." toplabel [ "." ] ) / macro-expand`,
    /// `toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )`.
    pub fn is_domain_spec(&self) -> bool {
        if self.ends_with_macro {
            return true;
        }
        let Some(Piece::Literal(tail)) = self.pieces.last() else {
            return false;
        };
        let tail = tail.strip_suffix('.').unwrap_or(tail);
        let Some(dot) = tail.rfind('.') else {
            return false;
        };
        is_toplabel(&tail[dot + 1..])
    }

    /// Expands the string. For a domain-spec, use [`MacroString::expand_domain`].
    pub fn expand(&self, ctx: &MacroContext<'_>) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Macro { letter, keep, reverse, delimiters, escape } => {
                    let value = letter_value(*letter, ctx);
                    let transformed = transform(&value, *keep, *reverse, delimiters);
                    if *escape {
                        url_escape(&transformed, &mut out);
                    } else {
                        out.push_str(&transformed);
                    }
                }
            }
        }
        out
    }

    /// Expands a domain-spec: a trailing dot is dropped, and a name over 253 octets loses labels on the
    /// left until it fits (RFC 7208 §7.3).
    pub fn expand_domain(&self, ctx: &MacroContext<'_>) -> String {
        let mut s = self.expand(ctx);
        if s.ends_with('.') {
            s.pop();
        }
        while s.len() > 253 {
            match s.find('.') {
                Some(dot) => {
                    s.drain(..=dot);
                }
                None => break,
            }
        }
        s
    }
}

fn is_toplabel(label: &str) -> bool {
    let b = label.as_bytes();
    if b.is_empty() || !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') {
        return false;
    }
    if !b.contains(&b'-') {
        return b.iter().any(u8::is_ascii_alphabetic);
    }
    b[0].is_ascii_alphanumeric() && b[b.len() - 1].is_ascii_alphanumeric()
}

fn letter_value(letter: Letter, ctx: &MacroContext<'_>) -> String {
    match letter {
        Letter::Sender => format!("{}@{}", ctx.local, ctx.sender_domain),
        Letter::Local => ctx.local.to_string(),
        Letter::SenderDomain => ctx.sender_domain.to_string(),
        Letter::Domain => ctx.domain.to_string(),
        Letter::Ip => match ctx.ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => {
                let mut s = String::with_capacity(63);
                for (i, b) in v6.octets().iter().enumerate() {
                    if i > 0 {
                        s.push('.');
                    }
                    s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
                    s.push('.');
                    s.push(char::from_digit(u32::from(b & 0x0f), 16).unwrap_or('0'));
                }
                s
            }
        },
        Letter::Ptr => ctx.validated.unwrap_or("unknown").to_string(),
        Letter::Version => match ctx.ip {
            IpAddr::V4(_) => "in-addr".to_string(),
            IpAddr::V6(_) => "ip6".to_string(),
        },
        Letter::Helo => ctx.helo.to_string(),
        Letter::ClientIp => ctx.ip.to_string(),
        Letter::Receiver => ctx.receiver.to_string(),
        Letter::Timestamp => ctx.timestamp.to_string(),
    }
}

/// Splits on the delimiters, optionally reverses, keeps the right-most `keep` parts, joins with dots
/// (RFC 7208 §7.3).
fn transform(value: &str, keep: Option<usize>, reverse: bool, delimiters: &[u8]) -> String {
    if keep.is_none() && !reverse && delimiters.is_empty() {
        return value.to_string();
    }
    let delims: &[u8] = if delimiters.is_empty() { b"." } else { delimiters };
    let mut parts: Vec<&str> = value.split(|c: char| c.is_ascii() && delims.contains(&(c as u8))).collect();
    if reverse {
        parts.reverse();
    }
    let skip = keep.map_or(0, |k| parts.len().saturating_sub(k));
    parts[skip..].join(".")
}

/// Percent-encodes everything outside RFC 3986's unreserved set.
fn url_escape(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> MacroContext<'static> {
        MacroContext {
            local: "strong-bad",
            sender_domain: "email.example.com",
            domain: "email.example.com",
            ip: "192.0.2.3".parse().unwrap(),
            helo: "mx.example.org",
            receiver: "mx.example.net",
            validated: None,
            timestamp: 0,
        }
    }

    /// The examples of RFC 7208 §7.4.
    #[test]
    fn rfc_7208_section_7_4_examples() {
        let c = ctx();
        let cases = [
            ("%{s}", "strong-bad@email.example.com"),
            ("%{o}", "email.example.com"),
            ("%{d}", "email.example.com"),
            ("%{d4}", "email.example.com"),
            ("%{d3}", "email.example.com"),
            ("%{d2}", "example.com"),
            ("%{d1}", "com"),
            ("%{dr}", "com.example.email"),
            ("%{d2r}", "example.email"),
            ("%{l}", "strong-bad"),
            ("%{l-}", "strong.bad"),
            ("%{lr}", "strong-bad"),
            ("%{lr-}", "bad.strong"),
            ("%{l1r-}", "strong"),
            ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
            ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
            ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
        ];
        for (m, want) in cases {
            assert_eq!(MacroString::parse(m).unwrap().expand(&c), want, "{m}");
        }
        let v6 = MacroContext { ip: "2001:db8::cb01".parse().unwrap(), ..ctx() };
        assert_eq!(
            MacroString::parse("%{ir}.%{v}._spf.%{d2}").unwrap().expand(&v6),
            "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
        );
    }

    #[test]
    fn upper_case_macros_are_url_escaped() {
        let c = MacroContext { local: "~jack&jill=up-a_b3.c", ..ctx() };
        assert_eq!(MacroString::parse("l=%{L}").unwrap().expand(&c), "l=~jack%26jill%3Dup-a_b3.c");
    }

    #[test]
    fn escapes_and_syntax_errors() {
        let c = ctx();
        assert_eq!(MacroString::parse("a%%b%_c%-d").unwrap().expand(&c), "a%b c%20d");
        for bad in ["%(ir)", "foo%.bar", "%{a}", "%{d0}", "%{dx}", "%{d", "%", "a\u{7f}", "a b"] {
            assert!(MacroString::parse(bad).is_err(), "{bad:?}");
        }
        assert!(MacroString::parse("%{c}").is_err());
        assert!(MacroString::parse_explanation("from %{c} at %{t}").is_ok());
    }

    #[test]
    fn domain_spec_needs_a_toplabel_or_a_final_macro() {
        for good in ["example.com", "example.com.", "_spf.%{d2}", "foo:bar/baz.example.com", "a.xn--zckzah"] {
            assert!(MacroString::parse(good).unwrap().is_domain_spec(), "{good}");
        }
        for bad in ["museum", "museum.", "abc.123", "111.222.33.44", "example.-com", "foo-bar", "example.com/24"] {
            assert!(!MacroString::parse(bad).unwrap().is_domain_spec(), "{bad}");
        }
    }

    #[test]
    fn long_expansions_lose_labels_on_the_left() {
        let c = MacroContext { sender_domain: "somewhat.long.exp.example.com", ..ctx() };
        let m = MacroString::parse("foobar.%{o}.%{o}.%{o}.%{o}.%{o}.%{o}.%{o}.%{o}.example.com").unwrap();
        let d = m.expand_domain(&c);
        assert!(d.len() <= 253);
        assert!(d.starts_with("somewhat.long.exp.example.com.somewhat"), "{d}");
    }
}
