//! RFC 5322-style field blocks as used by `message/delivery-status` (RFC 3464 §2.1) and
//! `message/feedback-report` (RFC 5965 §3.1): `Name: value` lines, folded continuation lines, groups
//! separated by blank lines. Tolerant: lines that are not fields are skipped, any line ending is accepted.

use std::borrow::Cow;

use super::text::{collapse_ws, lines, needs_collapse};

/// One field: the name as written and the unfolded value with whitespace collapsed (borrowed from the
/// input when it needed no change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Field<'a> {
    /// Field name as written (compare with `eq_ignore_ascii_case`).
    pub name: &'a str,
    /// Unfolded value, whitespace runs collapsed to one space.
    pub value: Cow<'a, str>,
}

/// A group of fields (one per-message or per-recipient block of a DSN).
pub(crate) type Block<'a> = Vec<Field<'a>>;

/// Whether `line` starts with a field name followed by a colon (RFC 5322 §3.6.8 ftext, no spaces).
fn field_name(line: &str) -> Option<(&str, &str)> {
    let colon = line.find(':')?;
    let name = &line[..colon];
    if name.is_empty() || name.len() > 76 || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return None;
    }
    Some((name, &line[colon + 1..]))
}

/// A field being read: its name, the value on its first line, and the continuation lines seen so far.
struct Pending<'a> {
    name: &'a str,
    first: &'a str,
    folded: Option<String>,
}

impl<'a> Pending<'a> {
    fn finish(self) -> Field<'a> {
        let value = match self.folded {
            Some(all) => Cow::Owned(collapse_ws(&all)),
            None if !needs_collapse(self.first.trim()) => Cow::Borrowed(self.first.trim()),
            None => Cow::Owned(collapse_ws(self.first)),
        };
        Field { name: self.name, value }
    }
}

/// Splits `text` into blocks of fields. Blank lines end a block; continuation lines (starting with space or
/// tab) extend the previous field's value.
pub(crate) fn blocks(text: &str) -> Vec<Block<'_>> {
    let mut out: Vec<Block<'_>> = Vec::new();
    let mut current: Block<'_> = Vec::new();
    let mut pending: Option<Pending<'_>> = None;
    for line in lines(text) {
        if line.trim().is_empty() {
            current.extend(pending.take().map(Pending::finish));
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(p) = pending.as_mut() {
                let folded = p.folded.get_or_insert_with(|| p.first.to_string());
                folded.push(' ');
                folded.push_str(line);
            }
            continue;
        }
        current.extend(pending.take().map(Pending::finish));
        if let Some((name, first)) = field_name(line) {
            pending = Some(Pending { name, first, folded: None });
        }
    }
    current.extend(pending.take().map(Pending::finish));
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The first value of field `name` in `block`, if present and non-empty.
pub(crate) fn get<'a>(block: &'a [Field<'_>], name: &str) -> Option<&'a str> {
    block.iter().find(|f| f.name.eq_ignore_ascii_case(name)).map(|f| f.value.as_ref()).filter(|v| !v.is_empty())
}

/// Longest type name read before a `;` (`X-Outbound-Mail-Relay` and other `X-` types run past 20 bytes).
const MAX_TYPE_LEN: usize = 40;

/// Splits a typed value `type; text` (RFC 3464 address-type / diagnostic-type / mta-name-type) into its
/// lowercase type and text. Values without a type give `(None, value)`.
pub(crate) fn split_typed(value: &str) -> (Option<String>, &str) {
    if let Some((kind, rest)) = value.split_once(';') {
        let kind = kind.trim();
        if !kind.is_empty() && kind.len() <= MAX_TYPE_LEN && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return (Some(kind.to_ascii_lowercase()), rest.trim());
        }
    }
    (None, value.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_split_on_blank_lines_and_unfolded() {
        let text = "Reporting-MTA: dns; mx.example.com\r\n\r\nFinal-Recipient: rfc822; a@example.org\r\n\
                    Diagnostic-Code: smtp; 550 5.1.1\r\n    user unknown\r\n";
        let b = blocks(text);
        assert_eq!(b.len(), 2);
        assert_eq!(get(&b[0], "reporting-mta"), Some("dns; mx.example.com"));
        assert_eq!(get(&b[1], "Diagnostic-Code"), Some("smtp; 550 5.1.1 user unknown"));
    }

    #[test]
    fn cr_only_blocks_parse() {
        let b = blocks("Action: failed\rStatus: 5.1.1\r\rAction: delayed\r");
        assert_eq!(b.len(), 2);
        assert_eq!(get(&b[0], "status"), Some("5.1.1"));
    }

    #[test]
    fn typed_values_split() {
        assert_eq!(split_typed("SMTP; 550 no"), (Some("smtp".into()), "550 no"));
        assert_eq!(split_typed("550 no; really"), (None, "550 no; really"));
        assert_eq!(split_typed("X-Outbound-Mail-Relay; Name service error"), (Some("x-outbound-mail-relay".into()), "Name service error"));
    }
}
