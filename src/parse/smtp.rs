//! SMTP signals inside diagnostic text: the reply code (RFC 5321 §4.2), the enhanced status code
//! (RFC 3463 `class.subject.detail`) and the SMTP command that was answered.

/// Whether the byte before `i` allows a code to start there (not part of a longer number or word). A status
/// code may follow `-` (`550-5.7.26`); a reply code may not (`id-550`, `10:550`).
fn boundary_before(b: &[u8], i: usize, strict: bool) -> bool {
    i == 0
        || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'.' || (strict && matches!(b[i - 1], b'-' | b':')))
}

/// Finds the first RFC 3463 enhanced status code (`2.x.x`, `4.x.x`, `5.x.x`) in `text`. A dotted quad such
/// as an IPv4 address is not a status code.
pub(crate) fn enhanced_status(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut i = 0;
    while i + 4 < b.len() {
        let c = b[i];
        if matches!(c, b'2' | b'4' | b'5') && b[i + 1] == b'.' && boundary_before(b, i, false) {
            let mut j = i + 2;
            let s = j;
            while j < b.len() && b[j].is_ascii_digit() && j - s < 3 {
                j += 1;
            }
            if j > s && j < b.len() && b[j] == b'.' && j - s <= 3 {
                let d = j + 1;
                let mut k = d;
                while k < b.len() && b[k].is_ascii_digit() && k - d < 3 {
                    k += 1;
                }
                let ends_clean = k == b.len()
                    || !(b[k].is_ascii_alphanumeric() || (b[k] == b'.' && b.get(k + 1).is_some_and(u8::is_ascii_digit)));
                if k > d && ends_clean {
                    return Some(text[i..k].to_string());
                }
            }
        }
        i += 1;
    }
    None
}

/// Finds the first plausible SMTP reply code (2yz, 4yz, 5yz with y in 0..=5) standing as its own token, e.g.
/// `550 `, `550-`, `#550`, `(550)`. Numbers inside longer numbers, dates or addresses are skipped.
pub(crate) fn reply_code(text: &str) -> Option<u16> {
    let b = text.as_bytes();
    let mut i = 0;
    while i + 2 < b.len() {
        if matches!(b[i], b'2' | b'4' | b'5')
            && (b'0'..=b'5').contains(&b[i + 1])
            && b[i + 2].is_ascii_digit()
            && boundary_before(b, i, true)
        {
            let ok = match b.get(i + 3) {
                None => true,
                // "550-5.7.1" and "550-Mailbox" are multi-line replies; "555-1234" is a phone number.
                Some(b'-') => match (b.get(i + 4), b.get(i + 5)) {
                    (Some(d), Some(next)) if d.is_ascii_digit() => *next == b'.',
                    _ => true,
                },
                Some(c) => matches!(c, b' ' | b')' | b'\t' | b',' | b']' | b';'),
            };
            if ok {
                let code = u16::from(b[i] - b'0') * 100 + u16::from(b[i + 1] - b'0') * 10 + u16::from(b[i + 2] - b'0');
                return Some(code);
            }
        }
        i += 1;
    }
    None
}

/// Which SMTP command the diagnostic answers, from the wording MTAs use ("in reply to RCPT TO command",
/// "after end of data", "while talking to", "SMTP error from remote mail server after MAIL FROM", ...).
/// Returns `CONN`, `HELO`, `MAIL`, `RCPT` or `DATA`.
pub(crate) fn smtp_command(text: &str) -> Option<&'static str> {
    let lower = text.to_ascii_lowercase();
    const RULES: &[(&str, &str)] = &[
        ("end of data", "DATA"),
        ("after data", "DATA"),
        ("data command", "DATA"),
        ("message body", "DATA"),
        ("after end of", "DATA"),
        (">>> data", "DATA"),
        ("rcpt to", "RCPT"),
        ("rcpt command", "RCPT"),
        (">>> rcpt", "RCPT"),
        ("mail from", "MAIL"),
        ("mail command", "MAIL"),
        (">>> mail", "MAIL"),
        ("ehlo", "HELO"),
        ("helo", "HELO"),
        ("initial connection", "CONN"),
        ("greeting", "CONN"),
        ("banner", "CONN"),
        ("connect to", "CONN"),
        ("connection refused", "CONN"),
        ("connection timed out", "CONN"),
        ("sender was rejected", "MAIL"),
    ];
    // The earliest command mentioned wins: "after RCPT TO:<x>: 550 ... (in reply to MAIL FROM)" is rare, but
    // a transcript mentions commands in order and the failing one is reported first in prose.
    RULES
        .iter()
        .filter_map(|(needle, cmd)| lower.find(needle).map(|pos| (pos, *cmd)))
        .min_by_key(|(pos, _)| *pos)
        .map(|(_, cmd)| cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_are_found_and_ip_addresses_are_not() {
        assert_eq!(enhanced_status("host 10.5.1.1 said 550 5.1.1 unknown").as_deref(), Some("5.1.1"));
        assert_eq!(enhanced_status("from 192.0.2.5.1.2").as_deref(), None);
        assert_eq!(enhanced_status("#5.7.606 Access denied").as_deref(), Some("5.7.606"));
        assert_eq!(enhanced_status("550-5.7.26 unauthenticated").as_deref(), Some("5.7.26"));
        assert_eq!(enhanced_status("version 5.0"), None);
    }

    #[test]
    fn reply_codes_stand_alone() {
        assert_eq!(reply_code("host said: 550 5.1.1 no such user"), Some(550));
        assert_eq!(reply_code("550-5.7.1 blocked"), Some(550));
        assert_eq!(reply_code("id 12550 at 2010-04-29 then 421 try later"), Some(421));
        assert_eq!(reply_code("#550 5.1.1 RESOLVER"), Some(550));
        assert_eq!(reply_code("no code 5.1.1 here"), None);
        assert_eq!(reply_code("phone 555-1234"), None);
    }

    #[test]
    fn smtp_command_from_wording() {
        assert_eq!(smtp_command("550 5.1.1 unknown (in reply to RCPT TO command)"), Some("RCPT"));
        assert_eq!(smtp_command("SMTP error from remote mail server after end of data: 554"), Some("DATA"));
        assert_eq!(smtp_command("SMTP error from remote mail server after MAIL FROM:<a@b.example>"), Some("MAIL"));
        assert_eq!(smtp_command("550 user unknown"), None);
    }
}
