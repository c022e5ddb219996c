//! Text helpers shared by the parsers: line splitting for LF, CRLF and CR-only input, whitespace collapsing,
//! and e-mail address scanning.

/// Iterates over the lines of `text`, accepting `\n`, `\r\n` and a bare `\r` as line ends.
pub(crate) fn lines(text: &str) -> Lines<'_> {
    Lines { rest: text }
}

/// Iterator returned by [`lines`].
pub(crate) struct Lines<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.rest.is_empty() {
            return None;
        }
        let bytes = self.rest.as_bytes();
        match memchr::memchr2(b'\n', b'\r', bytes) {
            Some(i) => {
                let line = &self.rest[..i];
                let skip = if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
                self.rest = &self.rest[i + skip..];
                Some(line)
            }
            None => {
                let line = self.rest;
                self.rest = "";
                Some(line)
            }
        }
    }
}

/// ASCII case-insensitive substring test (`needle` must be lowercase).
pub(crate) fn contains_ci(haystack: &str, needle: &str) -> bool {
    find_ci(haystack, needle).is_some()
}

/// Byte offset of the first ASCII case-insensitive occurrence of `needle` (lowercase) in `haystack`.
pub(crate) fn find_ci(haystack: &str, needle: &str) -> Option<usize> {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    let first = *n.first()?;
    let alt = first.to_ascii_uppercase();
    let mut from = 0;
    while let Some(rel) = memchr::memchr2(first, alt, &h[from..]) {
        let i = from + rel;
        if h.len() - i >= n.len() && h[i..i + n.len()].eq_ignore_ascii_case(n) {
            return Some(i);
        }
        from = i + 1;
    }
    None
}

/// Whether `trimmed` (already trimmed) has whitespace other than single ASCII spaces.
pub(crate) fn needs_collapse(trimmed: &str) -> bool {
    // One pass: the values checked are short, where building a substring searcher for "  " cost more.
    let mut after_space = false;
    for &c in trimmed.as_bytes() {
        if !c.is_ascii() || (c != b' ' && c.is_ascii_whitespace()) || (c == b' ' && after_space) {
            return true;
        }
        after_space = c == b' ';
    }
    false
}

/// Collapses every run of whitespace to one space and trims both ends.
pub(crate) fn collapse_ws(text: &str) -> String {
    let trimmed = text.trim();
    if !needs_collapse(trimmed) {
        return trimmed.to_string();
    }
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// An e-mail address found in free text: its byte range in the line and the address itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AddrMatch {
    /// Byte offset of the first character of the address in the scanned text.
    pub start: usize,
    /// Byte offset just past the address.
    pub end: usize,
    /// The address, local part as written, domain lowercased.
    pub addr: String,
}

/// Characters of a local part as they occur in practice (RFC 5321 allows more; `/`, `?`, `&` would drag in
/// URL parts).
fn is_local_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._%+-='!#$".contains(&b)
}

fn is_domain_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'-'
}

/// Finds every plausible `local@domain.tld` address in `text` (ASCII only; the domain needs a dot).
pub(crate) fn find_addresses(text: &str) -> Vec<AddrMatch> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(rel) = memchr::memchr(b'@', &bytes[from..]) {
        let at = from + rel;
        from = at + 1;
        let mut start = at;
        while start > 0 && is_local_char(bytes[start - 1]) {
            start -= 1;
        }
        // Drop leading dots and quote-like punctuation a sentence may put before an address.
        while start < at && matches!(bytes[start], b'.' | b'\'' | b'=') {
            start += 1;
        }
        // An address inside a URL (`?Endpoint=a@b`, `/a@b`) is a parameter, not a mention.
        if start > 0 && matches!(bytes[start - 1], b'/' | b'?' | b'&') {
            continue;
        }
        let mut end = at + 1;
        while end < bytes.len() && is_domain_char(bytes[end]) {
            end += 1;
        }
        while end > at + 1 && matches!(bytes[end - 1], b'.' | b'-') {
            end -= 1;
        }
        if start == at || end == at + 1 {
            continue;
        }
        let domain = &text[at + 1..end];
        if !domain.contains('.') || domain.starts_with('.') || domain.contains("..") {
            continue;
        }
        let tld = domain.rsplit('.').next().unwrap_or("");
        if tld.len() < 2 || !tld.bytes().all(|b| b.is_ascii_alphabetic()) {
            continue;
        }
        let local = &text[start..at];
        if local.len() > 64 {
            continue;
        }
        let mut addr = String::with_capacity(end - start);
        addr.push_str(local);
        addr.push('@');
        addr.push_str(&domain.to_ascii_lowercase());
        out.push(AddrMatch { start, end, addr });
        from = end;
    }
    out
}

/// Normalises an address value from a header or DSN field: strips an `rfc822;`-style type, angle brackets,
/// quotes and a `mailto:` prefix, and lowercases the domain. Returns `None` when nothing is left.
pub(crate) fn clean_address(value: &str) -> Option<String> {
    let mut v = value.trim();
    if let Some((kind, rest)) = v.split_once(';')
        && !kind.contains('@')
        && !kind.contains('<')
    {
        v = rest.trim();
    }
    if let (Some(open), Some(close)) = (v.find('<'), v.rfind('>'))
        && open < close
    {
        v = &v[open + 1..close];
    }
    let v = v.trim().trim_matches(|c| c == '"' || c == '\'' || c == '<' || c == '>').trim();
    let v = v.strip_prefix("mailto:").unwrap_or(v);
    if v.is_empty() {
        return None;
    }
    Some(match v.rsplit_once('@') {
        Some((local, domain)) => format!("{local}@{}", domain.to_ascii_lowercase()),
        None => v.to_string(),
    })
}

/// Strips HTML tags and decodes the few entities that matter for reading a bounce written in HTML. Block
/// elements (`br`, `p`, `div`, `tr`, `li`, headings) become line breaks.
pub(crate) fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        push_text(&mut out, &rest[..open]);
        let Some(close) = rest[open..].find('>') else {
            rest = "";
            break;
        };
        let tag = &rest[open + 1..open + close];
        let name = tag.trim_start_matches('/').split(|c: char| c.is_ascii_whitespace() || c == '/').next().unwrap_or("");
        if ["br", "p", "div", "tr", "li", "table", "h1", "h2", "h3"].iter().any(|b| name.eq_ignore_ascii_case(b)) {
            out.push('\n');
        }
        rest = &rest[open + close + 1..];
    }
    push_text(&mut out, rest);
    out
}

/// Appends text between tags, decoding `&nbsp; &lt; &gt; &quot; &amp;`.
fn push_text(out: &mut String, text: &str) {
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let entity = &rest[amp..];
        let (decoded, len) = [("&nbsp;", " "), ("&lt;", "<"), ("&gt;", ">"), ("&quot;", "\""), ("&amp;", "&")]
            .iter()
            .find(|(e, _)| entity.starts_with(e))
            .map_or(("&", 1), |(e, d)| (*d, e.len()));
        out.push_str(decoded);
        rest = &entity[len..];
    }
    out.push_str(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_runs_collapse() {
        assert_eq!(collapse_ws("  a \t b\r\n  c  "), "a b c");
        assert_eq!(collapse_ws("plain words"), "plain words");
        assert_eq!(collapse_ws("é\u{a0}x"), "é x");
    }

    #[test]
    fn only_single_ascii_spaces_need_no_collapse() {
        assert!(!needs_collapse("a b c"));
        assert!(!needs_collapse(""));
        for text in ["a  b", "a\tb", "a\nb", "a\u{a0}b", "caf\u{e9}", "a \x0cb"] {
            assert!(needs_collapse(text), "{text:?}");
        }
    }

    #[test]
    fn lines_split_on_every_line_ending() {
        let v: Vec<&str> = lines("a\nb\r\nc\rd").collect();
        assert_eq!(v, ["a", "b", "c", "d"]);
        let v: Vec<&str> = lines("a\r\n\r\nb\n").collect();
        assert_eq!(v, ["a", "", "b"]);
    }

    #[test]
    fn addresses_found_with_brackets_and_punctuation() {
        let found = find_addresses("<Kijitora@Example.JP>: host said: 550 to user.name+tag@mx.example.org.");
        let addrs: Vec<&str> = found.iter().map(|m| m.addr.as_str()).collect();
        assert_eq!(addrs, ["Kijitora@example.jp", "user.name+tag@mx.example.org"]);
    }

    #[test]
    fn addresses_without_a_real_domain_are_ignored() {
        assert!(find_addresses("user@localhost and a@b.1 and @example.com").is_empty());
    }

    #[test]
    fn html_becomes_lines_of_text() {
        let text = html_to_text("<p>Your message to <a href=\"mailto:a@b.example\">a@b.example</a></p><br/>550&nbsp;5.1.1 &lt;x&gt; &amp; more");
        assert_eq!(text, "\nYour message to a@b.example\n\n550 5.1.1 <x> & more");
        assert_eq!(html_to_text("unclosed <tag"), "unclosed ");
    }

    #[test]
    fn clean_address_strips_type_and_brackets() {
        assert_eq!(clean_address("rfc822; <Neko@Example.COM>").as_deref(), Some("Neko@example.com"));
        assert_eq!(clean_address("  \"a@b.example\" ").as_deref(), Some("a@b.example"));
        assert_eq!(clean_address("rfc822;").as_deref(), None);
    }
}
