//! What the model sees: the diagnostic text, normalised and masked, turned into hashed features, and the
//! structured signals (enhanced status code, reply code, DSN action, failed SMTP command, message kind, the
//! status prior's verdict) turned into signal tokens. Shared by training and inference so both see the same.
//!
//! Normalisation, in order (see [`normalise`]):
//! 1. the text is cut at [`MAX_TEXT_CHARS`] characters (diagnostics are short; the rest is noise);
//! 2. control characters and U+FFFD (what non-UTF-8 bytes become) turn into spaces;
//! 3. URLs, e-mail addresses, IP addresses, host names, IDs and numbers are masked (`urlx`, `emailx`, `ipx`,
//!    `hostx`, `idx`, `num`) so that a recipient's address or a queue ID never decides a reason;
//! 4. enhanced status codes become one token (`5.1.1` → `st5_1_1`); three-digit reply codes stay as they are.
//!
//! [`words`] then applies NFKC and lowercasing and splits word and punctuation runs — what the tokenizer's
//! normalizer and pre-tokenizer in `models/tokenizer.json` declare, done here in one pass because the
//! tokenizers crate's general `encode` costs ~0.3 ms a text — and the tokenizer's word-level vocabulary maps
//! the words to ids. Features of one text: its known words, hashed word bigrams, hashed character
//! 3- to 5-grams of every word (so "mail box", "mailbox" and "mial box" share most features), the 4-grams
//! that span two adjacent words, and a word's letters in sorted order when it has four or more (an anagram
//! key: "mailbox" and the transposition typo "mialbox" share it, where a swap breaks most character grams).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::ops::Range;
use std::sync::OnceLock;

use regex::Regex;

use super::status;
use crate::parse::{Kind, Recipient};

/// Input cut: only the first 2,048 characters of a diagnostic text are read.
pub const MAX_TEXT_CHARS: usize = 2048;

/// The structured signals of one recipient.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signals {
    /// Kind of the message the recipient comes from; `None` for a bare text.
    pub kind: Option<Kind>,
    /// RFC 3463 enhanced status code as written, e.g. `5.1.1`.
    pub status: Option<String>,
    /// SMTP reply code, e.g. 550.
    pub reply_code: Option<u16>,
    /// DSN Action, lowercase.
    pub action: Option<String>,
    /// The SMTP command that failed (CONN, HELO, MAIL, RCPT, DATA), if known.
    pub smtp_command: Option<String>,
}

impl Signals {
    /// The signals of a parsed recipient.
    pub fn of_recipient(kind: Kind, recipient: &Recipient) -> Signals {
        Signals {
            kind: Some(kind),
            status: recipient.status.clone(),
            reply_code: recipient.reply_code,
            action: recipient.action.as_ref().map(|a| a.to_ascii_lowercase()),
            smtp_command: recipient.smtp_command.as_ref().map(|c| c.to_ascii_uppercase()),
        }
    }

    /// The signal tokens fed to the model's signal bag, e.g. `sd=1.1`, `rc=550`, `prior=userunknown`.
    pub fn tokens(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(10);
        self.each_token(&self.prior(), |t| out.push(t.to_string()));
        out
    }

    /// Pass each of [`Signals::tokens`] to `each`, in order, given `prior`, the reason the status prior names
    /// for these signals ([`Signals::prior`]). The tokens are written in turn into one buffer, piece by piece
    /// (no allocation per token, and no formatting machinery: inference hashes them and drops them).
    pub fn each_token(&self, prior: &str, mut each: impl FnMut(&str)) {
        let mut buf = String::with_capacity(48);
        let mut token = |pieces: &[Piece<'_>]| {
            buf.clear();
            for piece in pieces {
                match *piece {
                    Piece::Text(text) => buf.push_str(text),
                    Piece::Number(n) => push_number(&mut buf, n),
                }
            }
            each(&buf);
        };
        use Piece::{Number as N, Text as T};
        token(&[T("kind="), T(self.kind.map_or("text", Kind::as_str))]);
        let code = self.status.as_deref().and_then(status::parse_enhanced);
        match code {
            Some((class, subject, detail)) => {
                let (class, subject, detail) = (u32::from(class), u32::from(subject), u32::from(detail));
                token(&[T("sc="), N(class)]);
                token(&[T("ss="), N(class), T("."), N(subject)]);
                token(&[T("sd="), N(subject), T("."), N(detail)]);
                token(&[T("sx="), N(class), T("."), N(subject), T("."), N(detail)]);
            }
            None => token(&[T("sc=none")]),
        }
        match self.reply_code {
            Some(code) => {
                token(&[T("rc="), N(u32::from(code))]);
                token(&[T("rcc="), N(u32::from(code / 100))]);
            }
            None => token(&[T("rc=none")]),
        }
        token(&[T("act="), T(self.action.as_deref().unwrap_or("none"))]);
        let command = self.smtp_command.as_deref().unwrap_or("none");
        token(&[T("cmd="), T(command)]);
        // Where the dialogue failed changes what a code means (a "user unknown" 5.1.1 after DATA is a
        // content filter's answer), so the command is also paired with the code and the prior's verdict.
        match code {
            Some((class, subject, _)) => {
                token(&[T("cmd&ss="), T(command), T("/"), N(u32::from(class)), T("."), N(u32::from(subject))]);
            }
            None => token(&[T("cmd&rcc="), T(command), T("/"), N(u32::from(self.reply_code.map_or(0, |c| c / 100)))]),
        }
        token(&[T("cmd&prior="), T(command), T("/"), T(prior)]);
        token(&[T("prior="), T(prior)]);
    }

    /// What the structured-signal prior ([`status::classify`]) says of these signals alone.
    pub fn prior_classification(&self) -> super::Classification {
        let recipient = Recipient {
            status: self.status.clone(),
            reply_code: self.reply_code,
            action: self.action.clone(),
            ..Recipient::default()
        };
        status::classify(self.kind.unwrap_or(Kind::Bounce), &recipient)
    }

    /// The reason the structured-signal prior names (`onhold` when it does not decide).
    pub fn prior(&self) -> String {
        self.prior_classification().reason
    }

    /// Whether the signals say the failure is permanent (5.x.x status or 5xx reply; failed action otherwise).
    pub fn permanent(&self) -> bool {
        if let Some((class, _, _)) = self.status.as_deref().and_then(status::parse_enhanced) {
            return class == 5;
        }
        if let Some(code) = self.reply_code {
            return (500..600).contains(&code);
        }
        self.action.as_deref() == Some("failed")
    }
}

/// A piece of a signal token ([`Signals::each_token`]).
enum Piece<'a> {
    Text(&'a str),
    /// Written in decimal, as `Display` writes it.
    Number(u32),
}

/// Append `n` in decimal, as `Display` writes it.
fn push_number(buf: &mut String, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend(digits[start..].iter().map(|&d| char::from(d)));
}

/// A masking pattern, compiled on its first use. Compiling one costs from 0.3 to 4 million instructions
/// (most of it for the Unicode classes of `\d`, `\b` and `\p{..}`), and a text runs only the passes its
/// characters call for, so a short run compiles only the patterns it uses. Only the IPv6 mask is left a
/// regex: the others are scanned by hand ([`urls`], [`emails`], [`ipv4s`], [`enhanced_codes`],
/// [`dotted_names`], [`alnum_words`]), each giving exactly the matches of the pattern written in its
/// documentation (the tests hold each to that regex).
struct Mask {
    pattern: &'static str,
    compiled: OnceLock<Regex>,
}

impl Mask {
    const fn new(pattern: &'static str) -> Mask {
        Mask { pattern, compiled: OnceLock::new() }
    }

    fn regex(&self) -> &Regex {
        self.compiled.get_or_init(|| Regex::new(self.pattern).expect("the mask patterns are valid regular expressions"))
    }
}

static IPV6: Mask =
    Mask::new(r"(?i)\b(?:[0-9a-f]{1,4}:){3,7}[0-9a-f]{1,4}\b|(?i)\b(?:[0-9a-f]{1,4}:){1,6}:(?:[0-9a-f]{1,4})?\b");

/// Whether `c` is a word character for `\b` (Unicode: letters, marks, decimal digits, connector
/// punctuation, join controls), by the regex crate's own definition.
fn is_word_char(c: char) -> bool {
    if c.is_ascii() { regex_syntax::is_word_byte(c as u8) } else { regex_syntax::is_word_character(c) }
}

/// Whether the character before byte `i` of `t` is a word character (false at the start).
fn word_before(t: &str, i: usize) -> bool {
    t[..i].chars().next_back().is_some_and(is_word_char)
}

/// Whether the character at byte `i` of `t` is a word character (false at the end).
fn word_at(t: &str, i: usize) -> bool {
    t[i..].chars().next().is_some_and(is_word_char)
}

/// Unicode `\b` at byte `i` of `t`: a word character on one side only.
fn word_boundary(t: &str, i: usize) -> bool {
    word_before(t, i) != word_at(t, i)
}

/// The ranges of the Unicode class `pattern` as the regex crate reads it (its own tables, through its
/// parser: a few thousand instructions, where compiling a regex with the class costs millions).
fn unicode_class(pattern: &str) -> Vec<(char, char)> {
    use regex_syntax::hir::{Class, HirKind};
    let hir = regex_syntax::parse(pattern).unwrap_or_else(|e| panic!("{pattern} is a valid pattern: {e}"));
    match hir.kind() {
        HirKind::Class(Class::Unicode(class)) => class.ranges().iter().map(|r| (r.start(), r.end())).collect(),
        other => unreachable!("{pattern} parses to a Unicode class, not {other:?}"),
    }
}

/// Whether `c` falls in one of `ranges` (sorted, disjoint).
fn in_class(ranges: &[(char, char)], c: char) -> bool {
    ranges
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                Ordering::Less
            } else if lo > c {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        })
        .is_ok()
}

/// Whether `c` is a decimal digit as Unicode `\d` reads it (general category Nd).
fn is_decimal(c: char) -> bool {
    static DECIMAL: OnceLock<Vec<(char, char)>> = OnceLock::new();
    if c.is_ascii() { c.is_ascii_digit() } else { in_class(DECIMAL.get_or_init(|| unicode_class(r"\d")), c) }
}

/// Whether `c` is a letter, a number or `_`: `[\p{L}\p{N}_]`, the characters of a word the word mask reads.
fn is_alnum(c: char) -> bool {
    static ALNUM: OnceLock<Vec<(char, char)>> = OnceLock::new();
    if c.is_ascii() {
        c.is_ascii_alphanumeric() || c == '_'
    } else {
        in_class(ALNUM.get_or_init(|| unicode_class(r"[\p{L}\p{N}_]")), c)
    }
}

/// The furthest end in `run` (a non-empty run of characters of `t`), from its end back to its first character's
/// end, that is a word boundary: where a greedy `[..]+\b` that backtracks stops.
fn furthest_boundary(t: &str, run: Range<usize>) -> Option<usize> {
    let first_char_end = run.start + t[run.start..].chars().next().map_or(0, char::len_utf8);
    let mut at = run.end;
    loop {
        if word_boundary(t, at) {
            return Some(at);
        }
        if at <= first_char_end {
            return None;
        }
        at -= t[..at].chars().next_back().map_or(0, char::len_utf8);
    }
}

/// Matches of `\b[\p{L}\p{N}_]+\b` (words), in order. From a start, the furthest end within the run of
/// word-mask characters that is a word boundary (a number like `²` is no word character for `\b`).
fn alnum_words(t: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(c) = t[i..].chars().next() {
        if !is_alnum(c) || !word_boundary(t, i) {
            i += c.len_utf8();
            continue;
        }
        let (run_end, _) = run_of(t, i, is_alnum);
        match furthest_boundary(t, i..run_end) {
            Some(end) => {
                out.push(i..end);
                i = end;
            }
            // A later start inside the run has the same ends or fewer: none matches either.
            None => i = run_end,
        }
    }
    out
}

/// Whether `c` is an ASCII letter, digit or `-`, or one of the two non-ASCII characters that `(?i)` folds
/// onto an ASCII letter (`ſ` onto `s`, the Kelvin sign `K` onto `k`): `(?i)[a-z0-9\-]`.
fn is_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '\u{17F}' || c == '\u{212A}'
}

/// `(?i)[a-z0-9._%+\-=/]`: a character of an address's local part.
fn is_local_part_char(c: char) -> bool {
    is_host_char(c) || matches!(c, '.' | '_' | '%' | '+' | '=' | '/')
}

/// The end of the run of `class` characters starting at byte `i` of `t`, and how many characters it has.
fn run_of(t: &str, i: usize, class: impl Fn(char) -> bool) -> (usize, usize) {
    let mut end = i;
    let mut count = 0;
    for c in t[i..].chars().take_while(|&c| class(c)) {
        end += c.len_utf8();
        count += 1;
    }
    (end, count)
}

/// Matches of `\b\d{1,3}(?:\.\d{1,3}){3}\b` (IPv4 addresses), in order.
fn ipv4s(t: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut dot = None;
    // A match's first run of digits is followed by a dot (most of a text has no dot to look at).
    while let Some((start, c)) = next_dotted_start(t, i, &mut dot, is_decimal) {
        i = start;
        if is_decimal(c)
            && !word_before(t, i)
            && let Some(end) = dotted_decimal_at(t, i, 4)
        {
            out.push(i..end);
            i = end;
            continue;
        }
        i += c.len_utf8();
    }
    out
}

/// The next place, at or after byte `from` of `t`, where a scan for matches whose first run of `class`
/// characters is followed by a dot (IPv4 addresses, dotted names) must look, and the character there. No such
/// match starts before the run that ends at the next dot, so the scan jumps to that run's start (taken no
/// further back than `from`; the dot itself when no `class` character precedes it) once `from` is past the
/// dot last found; `dot` keeps that dot between calls. `None` when no dot follows or the text ends.
fn next_dotted_start(
    t: &str,
    from: usize,
    dot: &mut Option<usize>,
    class: impl Fn(char) -> bool,
) -> Option<(usize, char)> {
    let mut at = from;
    if dot.is_none_or(|d| d < from) {
        let next_dot = from + memchr::memchr(b'.', &t.as_bytes()[from..])?;
        let run: usize = t[from..next_dot].chars().rev().take_while(|&c| class(c)).map(char::len_utf8).sum();
        (at, *dot) = (next_dot - run, Some(next_dot));
    }
    Some((at, t[at..].chars().next()?))
}

/// The end of `\d{1,3}(?:\.\d{1,3}){parts-1}\b` matched at byte `i` of `t`, if it matches there. Each part
/// is a whole run of digits (a fourth digit leaves neither a dot nor a boundary after three).
fn dotted_decimal_at(t: &str, i: usize, parts: usize) -> Option<usize> {
    let mut at = i;
    for part in 1..=parts {
        let (end, digits) = run_of(t, at, is_decimal);
        if !(1..=3).contains(&digits) {
            return None;
        }
        if part == parts {
            // After a digit, `\b` needs a non-word character or the end.
            return (!word_at(t, end)).then_some(end);
        }
        if t.as_bytes().get(end) != Some(&b'.') {
            return None;
        }
        at = end + 1;
    }
    None
}

/// Matches of `\b[245]\.\d{1,3}\.\d{1,3}\b` (enhanced status codes), in order.
fn enhanced_codes(t: &str) -> Vec<Range<usize>> {
    let b = t.as_bytes();
    let mut out: Vec<Range<usize>> = Vec::new();
    for i in memchr::memchr3_iter(b'2', b'4', b'5', b) {
        if out.last().is_some_and(|m| i < m.end) || b.get(i + 1) != Some(&b'.') || word_before(t, i) {
            continue;
        }
        if let Some(end) = dotted_decimal_at(t, i + 2, 2) {
            out.push(i..end);
        }
    }
    out
}

/// Matches of `(?i)\b[a-z0-9\-]+(?:\.[a-z0-9\-]+)+\b` (dotted names: hosts, versions), in order. From a
/// start, the parts are whole runs (a shorter run is followed by another name character, not a dot); the
/// regex's greedy backtracking then prefers the furthest end that is a word boundary, at least one character
/// into the second part.
fn dotted_names(t: &str) -> Vec<Range<usize>> {
    let b = t.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut dot = None;
    // A match's first run of name characters is followed by a dot, and a start before the run that ends at the
    // next dot matches nothing (its first run is followed by no dot).
    while let Some((start, c)) = next_dotted_start(t, i, &mut dot, is_host_char) {
        i = start;
        if !is_host_char(c) || !word_boundary(t, i) {
            i += c.len_utf8();
            continue;
        }
        // The parts from `i`: runs of name characters joined by single dots.
        let (first_end, _) = run_of(t, i, is_host_char);
        let mut parts = Vec::new();
        let mut end = first_end;
        while b.get(end) == Some(&b'.') {
            let (next_end, count) = run_of(t, end + 1, is_host_char);
            if count == 0 {
                break;
            }
            parts.push(end + 1..next_end);
            end = next_end;
        }
        match parts.iter().rev().find_map(|part| furthest_boundary(t, part.clone())) {
            Some(match_end) => {
                out.push(i..match_end);
                i = match_end;
            }
            // A later start inside these parts has the same ends or fewer: none matches either.
            None => i = end,
        }
    }
    out
}

/// Matches of `(?i)[a-z0-9._%+\-=/]+@[a-z0-9\-]+(?:\.[a-z0-9\-]+)*` (e-mail addresses), in order: for each
/// `@`, the local part back to where the search resumed, the domain as far as it goes.
fn emails(t: &str) -> Vec<Range<usize>> {
    let b = t.as_bytes();
    let mut out = Vec::new();
    let mut resume = 0;
    for at in memchr::memchr_iter(b'@', b) {
        if at < resume {
            continue;
        }
        let local = t[resume..at].char_indices().rev().take_while(|&(_, c)| is_local_part_char(c)).last();
        let Some((offset, _)) = local else { continue };
        let local_start = resume + offset;
        let (mut end, count) = run_of(t, at + 1, is_host_char);
        if count == 0 {
            continue;
        }
        while b.get(end) == Some(&b'.') {
            let (next_end, count) = run_of(t, end + 1, is_host_char);
            if count == 0 {
                break;
            }
            end = next_end;
        }
        out.push(local_start..end);
        resume = end;
    }
    out
}

/// Matches of `(?i)\b(?:https?|ftp)://[^\s<>()\[\]]+` (URLs), in order: for each `://`, a scheme just
/// before it that starts at a word boundary, and a non-empty rest.
fn urls(t: &str) -> Vec<Range<usize>> {
    let b = t.as_bytes();
    let mut out = Vec::new();
    let mut resume = 0;
    for colon in memchr::memmem::find_iter(b, b"://") {
        if colon < resume {
            continue;
        }
        let Some(start) = ["https", "http", "ftp"].iter().find_map(|scheme| scheme_start(t, colon, scheme)) else {
            continue;
        };
        if start < resume || word_before(t, start) {
            continue;
        }
        let in_url = |c: char| !c.is_whitespace() && !matches!(c, '<' | '>' | '(' | ')' | '[' | ']');
        let (end, count) = run_of(t, colon + 3, in_url);
        if count > 0 {
            out.push(start..end);
            resume = end;
        }
    }
    out
}

/// Where `scheme` (lowercase ASCII) starts if it ends at byte `end` of `t`, matched as `(?i)` does (either
/// ASCII case; `ſ` for `s`).
fn scheme_start(t: &str, end: usize, scheme: &str) -> Option<usize> {
    let mut start = end;
    let mut text = t[..end].chars().rev();
    for want in scheme.chars().rev() {
        let c = text.next()?;
        if c.to_ascii_lowercase() != want && !(want == 's' && c == '\u{17F}') {
            return None;
        }
        start -= c.len_utf8();
    }
    Some(start)
}

/// Normalise a diagnostic text: cut, clean, mask (see the module documentation). Lowercasing and Unicode
/// normalisation are the tokenizer's job, so this keeps case.
pub fn normalise(text: &str) -> String {
    // Each pass runs only when its trigger character is there (most diagnostics have no URL, no IPv6), and a
    // pass that replaces nothing leaves the text as it is (no copy).
    let mut s = cut_and_clean(text);
    if s.contains("://") {
        replace(&mut s, |t| replace_matches(t, urls(t), |_, out| out.push_str(" urlx ")));
    }
    if s.contains('@') {
        replace(&mut s, |t| replace_matches(t, emails(t), |_, out| out.push_str(" emailx ")));
    }
    let has_digit = s.bytes().any(|b| b.is_ascii_digit());
    if has_digit && s.contains('.') {
        replace(&mut s, |t| replace_matches(t, ipv4s(t), |_, out| out.push_str(" ipx ")));
        // ` st5_1_1 `: the code's dot-separated parts joined by underscores.
        replace(&mut s, |t| {
            replace_matches(t, enhanced_codes(t), |code, out| {
                out.push_str(" st");
                for (i, part) in code.split('.').enumerate() {
                    if i > 0 {
                        out.push('_');
                    }
                    out.push_str(part);
                }
                out.push(' ');
            })
        });
    }
    if s.contains("::") || s.bytes().filter(|&b| b == b':').count() >= 3 {
        replace(&mut s, |t| IPV6.regex().replace_all(t, " ipx "));
    }
    if s.contains('.') {
        replace(&mut s, |t| {
            replace_matches(t, dotted_names(t), |whole, out| {
                let last = whole.rsplit('.').next().unwrap_or("");
                let tld_like = (2..=6).contains(&last.len()) && last.chars().all(|ch| ch.is_ascii_alphabetic());
                out.push_str(if tld_like { " hostx " } else { whole });
            })
        });
    }
    if has_digit {
        replace(&mut s, mask_words);
    }
    s
}

/// The first [`MAX_TEXT_CHARS`] characters of `text`, control characters and U+FFFD turned into spaces.
fn cut_and_clean(text: &str) -> String {
    if text.is_ascii() {
        // One byte a character; the ASCII control characters are C0 and DEL.
        let cut = &text.as_bytes()[..text.len().min(MAX_TEXT_CHARS)];
        return cut.iter().map(|&b| if b < 0x20 || b == 0x7f { ' ' } else { char::from(b) }).collect();
    }
    text.chars().take(MAX_TEXT_CHARS).map(|c| if c.is_control() || c == '\u{FFFD}' { ' ' } else { c }).collect()
}

/// Apply one masking pass to `s`, keeping `s` (no copy) when the pass replaced nothing.
fn replace(s: &mut String, pass: impl for<'t> FnOnce(&'t str) -> Cow<'t, str>) {
    if let Cow::Owned(replaced) = pass(s) {
        *s = replaced;
    }
}

/// `Regex::replace_all` with a replacement computed from each match's text, given the matches' byte ranges
/// in order: the same output, without the capture-group search that `replace_all` makes for a closure.
fn replace_matches<'t>(
    text: &'t str,
    matches: impl IntoIterator<Item = Range<usize>>,
    mut replacement: impl FnMut(&'t str, &mut String),
) -> Cow<'t, str> {
    let mut out = String::new();
    let mut last = 0;
    let mut any = false;
    for m in matches {
        if !any {
            out.reserve(text.len() + 16);
            any = true;
        }
        out.push_str(&text[last..m.start]);
        replacement(&text[m.clone()], &mut out);
        last = m.end;
    }
    if !any {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[last..]);
    Cow::Owned(out)
}

/// The `alnum` pass: every word (`\b[\p{L}\p{N}_]+\b`) through [`mask_word`]. On ASCII text a word is a
/// maximal run of `[A-Za-z0-9_]` (Unicode `\b` and the class agree there), found byte by byte.
fn mask_words(text: &str) -> Cow<'_, str> {
    if !text.is_ascii() {
        return replace_matches(text, alnum_words(text), |w, out| out.push_str(mask_word(w)));
    }
    let b = text.as_bytes();
    let is_word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = String::new();
    let mut last = 0;
    let mut any = false;
    let mut i = 0;
    while i < b.len() {
        if !is_word(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && is_word(b[i]) {
            i += 1;
        }
        let word = &text[start..i];
        let masked = mask_word(word);
        if masked != word {
            if !any {
                out.reserve(text.len());
                any = true;
            }
            out.push_str(&text[last..start]);
            out.push_str(masked);
            last = i;
        }
    }
    if !any {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[last..]);
    Cow::Owned(out)
}

/// NFKC, lowercase, and split into runs of word characters (letters, digits, `_`) and runs of other
/// non-space characters: the normalizer and pre-tokenizer that `models/tokenizer.json` declares.
pub fn words(normalised: &str) -> Vec<String> {
    let mut out = Vec::new();
    each_word(normalised, |w| out.push(w.to_string()));
    out
}

/// Pass each of [`words`] to `each`, in order, written in turn into one buffer (no allocation per word: the
/// classify path looks the words up and drops them).
pub fn each_word(normalised: &str, mut each: impl FnMut(&str)) {
    use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};
    let mut cur = String::new();
    if normalised.is_ascii() {
        // ASCII is its own NFKC, and its lowercase is ASCII lowercase: the same split, byte by byte.
        let b = normalised.as_bytes();
        let mut start = 0;
        let mut cur_word = false;
        let mut push = |from: usize, to: usize| {
            if from < to {
                cur.clear();
                cur.push_str(&normalised[from..to]);
                cur.make_ascii_lowercase();
                each(&cur);
            }
        };
        for (i, &c) in b.iter().enumerate() {
            // char::is_whitespace on ASCII: TAB, LF, VT, FF, CR and space.
            if matches!(c, b'\t'..=b'\r' | b' ') {
                push(start, i);
                start = i + 1;
                continue;
            }
            let is_word = c.is_ascii_alphanumeric() || c == b'_';
            if start < i && is_word != cur_word {
                push(start, i);
                start = i;
            }
            cur_word = is_word;
        }
        push(start, b.len());
        return;
    }
    let mut cur_word = false;
    let mut split = |c: char| {
        if c.is_whitespace() {
            if !cur.is_empty() {
                each(&cur);
                cur.clear();
            }
            return;
        }
        let is_word = c.is_alphanumeric() || c == '_';
        if !cur.is_empty() && is_word != cur_word {
            each(&cur);
            cur.clear();
        }
        cur_word = is_word;
        cur.push(c);
    };
    // A text the quick check finds in NFKC already is left as it is (what `nfkc()` would give).
    if is_nfkc_quick(normalised.chars()) == IsNormalized::Yes {
        normalised.chars().flat_map(char::to_lowercase).for_each(&mut split);
    } else {
        normalised.nfkc().flat_map(char::to_lowercase).for_each(&mut split);
    }
    if !cur.is_empty() {
        each(&cur);
    }
}

/// Mask one word: numbers other than reply codes, and IDs (letters mixed with digits, 6+ characters).
fn mask_word(word: &str) -> &str {
    let digits = word.chars().filter(char::is_ascii_digit).count();
    if digits == 0 || word.starts_with("st") && word.contains('_') {
        return word;
    }
    let len = word.chars().count();
    if digits == len {
        let is_reply = len == 3 && matches!(word.as_bytes()[0], b'2' | b'4' | b'5');
        return if is_reply { word } else { "num" };
    }
    if len >= 6 { "idx" } else { word }
}

/// Strip RFC 3463 enhanced status codes and bare reply codes from a text (for the robustness evaluation and
/// for training augmentation: the model must not lean on codes that a real text may lack).
pub fn strip_codes(text: &str) -> String {
    static CODES: OnceLock<Regex> = OnceLock::new();
    let re = CODES.get_or_init(|| {
        Regex::new(r"[(#\[]*\b[245]\.\d{1,3}\.\d{1,3}\b[)\]]?|\b[245]\d\d(?:[ -]|\b)")
            .expect("the status-code pattern is valid")
    });
    let stripped = re.replace_all(text, " ");
    stripped.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Words of at least this many letters also give their anagram key (sorted letters) as a feature.
const ANAGRAM_MIN_LETTERS: usize = 4;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// Continue an FNV-1a hash over bytes, without marking an end (a part may be hashed in pieces).
fn fnv_bytes(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// Mark the end of a part (so `ab|c` ≠ `a|bc`).
fn fnv_end(h: u64) -> u64 {
    (h ^ 0xff).wrapping_mul(FNV_PRIME)
}

/// Continue an FNV-1a hash over one part, then mark the part's end.
fn fnv_part(h: u64, part: &[u8]) -> u64 {
    fnv_end(fnv_bytes(h, part))
}

/// 64-bit FNV-1a over parts, the feature hash (stable across platforms and versions, unlike `std`'s hasher).
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    parts.iter().fold(FNV_OFFSET, |h, p| fnv_part(h, p))
}

/// The features of a text (or of one word, see [`WordFeatures`]): their rows in the text embedding table, in
/// the order the network sums them, and their readable names when asked for (`classify --explain`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextFeatures {
    /// Rows in the text embedding table, in feature order.
    pub rows: Vec<u32>,
    /// One name per row (`w:word`, `b:word word`, `c:gram`, `a:letters`) when names were asked for; else empty.
    pub names: Vec<String>,
    named: bool,
}

impl TextFeatures {
    /// No features yet; `named` keeps a readable name per feature (slower; for explain).
    pub fn new(named: bool) -> TextFeatures {
        TextFeatures { rows: Vec::new(), names: Vec::new(), named }
    }

    fn push(&mut self, row: u32, name: impl FnOnce() -> String) {
        self.rows.push(row);
        if self.named {
            self.names.push(name());
        }
    }

    fn extend(&mut self, other: &TextFeatures) {
        self.rows.extend_from_slice(&other.rows);
        if self.named {
            self.names.extend_from_slice(&other.names);
        }
    }
}

/// What one word gives its text's features by itself: its vocabulary row, its character grams and anagram
/// key, and what the features it shares with the next word (the bigram, the 4-grams across the space) need
/// of it. The same word always gives the same, so the classify path computes it once per word and keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WordFeatures {
    /// The word's row when it is in the vocabulary.
    known: Option<u32>,
    /// The bigram hash after the word (the bigram continues it with the next word).
    bigram: u64,
    /// Character grams and anagram key, in feature order (none unless the word is alphabetic).
    inner: TextFeatures,
    /// The word's last (up to) three characters and its first three, when it is alphabetic.
    ends: Option<(Chars3, Chars3)>,
}

/// Up to three characters, UTF-8 (at most 12 bytes): an end of a word, for the 4-grams that span two words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chars3 {
    bytes: [u8; 12],
    len: u8,
    /// Byte offset of each character, then the length.
    bounds: [u8; 4],
    chars: u8,
}

impl Chars3 {
    /// `s`, which has at most three characters.
    fn new(s: &str) -> Chars3 {
        let mut c = Chars3 { bytes: [0; 12], len: s.len() as u8, bounds: [0; 4], chars: 0 };
        c.bytes[..s.len()].copy_from_slice(s.as_bytes());
        for (i, (at, _)) in s.char_indices().enumerate() {
            c.bounds[i] = at as u8;
            c.chars += 1;
        }
        c.bounds[usize::from(c.chars)] = c.len;
        c
    }

    /// The bytes from character `from` to character `to`.
    fn slice(&self, from: usize, to: usize) -> &[u8] {
        &self.bytes[usize::from(self.bounds[from])..usize::from(self.bounds[to])]
    }
}

/// Sizes that place features in the text embedding table: vocabulary rows first, then hash buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Number of vocabulary rows (the tokenizer's vocabulary size).
    pub vocab: u32,
    /// Number of hash buckets after the vocabulary rows.
    pub buckets: u32,
    /// Number of rows of the signal embedding table (hash buckets).
    pub signal_buckets: u32,
}

impl Layout {
    fn row_of(&self, hash: u64) -> u32 {
        let buckets = u64::from(self.buckets);
        // A power-of-two bucket count (the usual one) takes the remainder with a mask instead of a division.
        let bucket = if buckets.is_power_of_two() { hash & (buckets - 1) } else { hash % buckets };
        self.vocab + bucket as u32
    }

    /// Row of a signal token in the signal table.
    pub fn signal_row(&self, token: &str) -> u32 {
        (fnv1a(&[b"s", token.as_bytes()]) % u64::from(self.signal_buckets)) as u32
    }

    /// Features of a tokenised text: `tokens` are the words, `ids` their vocabulary ids (`unk` for unknown
    /// words). With `names`, each feature carries its readable name (slower; for explain).
    pub fn text_features(&self, tokens: &[String], ids: &[u32], unk: u32, names: bool) -> TextFeatures {
        let each: Vec<WordFeatures> = tokens
            .iter()
            .enumerate()
            .map(|(i, word)| self.word_features(word, ids.get(i).copied().unwrap_or(unk), unk, names))
            .collect();
        let words: Vec<(&str, &WordFeatures)> = tokens.iter().map(String::as_str).zip(&each).collect();
        let mut out = TextFeatures::new(names);
        self.join_words(&words, &mut out);
        out
    }

    /// What `word` (vocabulary id `id`, `unk` when unknown) gives by itself (see [`WordFeatures`]); with
    /// `names`, its features carry their readable names.
    pub fn word_features(&self, word: &str, id: u32, unk: u32, names: bool) -> WordFeatures {
        let known = (id != unk && id < self.vocab).then_some(id);
        let bigram = fnv_part(fnv_part(FNV_OFFSET, b"b"), word.as_bytes());
        let mut inner = TextFeatures::new(names);
        if !word.chars().all(char::is_alphabetic) {
            return WordFeatures { known, bigram, inner, ends: None };
        }
        let gram_prefix = fnv_part(FNV_OFFSET, b"c");
        // `<word>` and the byte offset of each of its characters (then its length): a gram of n characters
        // from character k is `marked[bounds[k]..bounds[k + n]]`, hashed without re-encoding.
        let mut marked = String::with_capacity(word.len() + 2);
        marked.push('<');
        marked.push_str(word);
        marked.push('>');
        let mut bounds: Vec<usize> = Vec::with_capacity(marked.len() + 1);
        bounds.extend(marked.char_indices().map(|(b, _)| b));
        bounds.push(marked.len());
        let chars = bounds.len() - 1;
        // 3-, 4- and 5-grams, and the anagram key
        inner.rows.reserve(3 * chars);
        for n in 3..=5 {
            if chars < n {
                break;
            }
            for k in 0..=chars - n {
                let g = &marked[bounds[k]..bounds[k + n]];
                inner.push(self.row_of(fnv_part(gram_prefix, g.as_bytes())), || format!("c:{g}"));
            }
        }
        let word_chars = chars - 2;
        if word_chars >= ANAGRAM_MIN_LETTERS {
            let mut letters: Vec<char> = word.chars().collect();
            letters.sort_unstable();
            let sorted: String = letters.into_iter().collect();
            let row = self.row_of(fnv_part(fnv_part(FNV_OFFSET, b"a"), sorted.as_bytes()));
            inner.push(row, || format!("a:{sorted}"));
        }
        let tail = &marked[bounds[1 + word_chars - word_chars.min(3)]..bounds[1 + word_chars]];
        let head = &marked[1..bounds[1 + word_chars.min(3)]];
        WordFeatures { known, bigram, inner, ends: Some((Chars3::new(tail), Chars3::new(head))) }
    }

    /// Append the features of a text given its words in order, each with what it gives by itself
    /// ([`Layout::word_features`]): for each word, its vocabulary row, the bigram with the next word, its
    /// character grams and anagram key, then the 4-grams that span the space to the next word when both are
    /// alphabetic (the word's last up to 3 characters, then the next word's first 3: the grams of that
    /// junction that are not in-word grams already).
    pub fn join_words(&self, words: &[(&str, &WordFeatures)], out: &mut TextFeatures) {
        let gram_prefix = fnv_part(FNV_OFFSET, b"c");
        for (i, &(word, f)) in words.iter().enumerate() {
            if let Some(row) = f.known {
                out.push(row, || format!("w:{word}"));
            }
            let next = words.get(i + 1);
            if let Some(&(next_word, _)) = next {
                out.push(self.row_of(fnv_part(f.bigram, next_word.as_bytes())), || format!("b:{word} {next_word}"));
            }
            out.extend(&f.inner);
            let Some(((tail, _), (_, head))) = f.ends.zip(next.and_then(|(_, n)| n.ends)) else {
                continue;
            };
            let (tail_chars, head_chars) = (usize::from(tail.chars), usize::from(head.chars));
            for k in 0..tail_chars.min((tail_chars + head_chars).saturating_sub(3)) {
                let (from_tail, from_head) = (tail.slice(k, tail_chars), head.slice(0, k + 4 - tail_chars));
                let row = self.row_of(fnv_end(fnv_bytes(fnv_bytes(gram_prefix, from_tail), from_head)));
                out.push(row, || {
                    format!("c:{}{}", String::from_utf8_lossy(from_tail), String::from_utf8_lossy(from_head))
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_addresses_hosts_ips_ids_and_numbers_but_keeps_codes() {
        let n = normalise("550 5.1.1 <john.doe@example.org>: Recipient address rejected [192.0.2.1] mx1.example.net id DB5EUR03FT012 after 3 tries");
        assert!(n.contains("550"), "{n}");
        assert!(n.contains("st5_1_1"), "{n}");
        assert!(n.contains("emailx") && n.contains("ipx") && n.contains("hostx") && n.contains("idx"), "{n}");
        assert!(n.contains("num"), "{n}");
        assert!(!n.contains("john") && !n.contains("192") && !n.contains("example"), "{n}");
    }

    /// The masks scanned by hand, as the regexes they replaced: the references they must equal.
    static URL: Mask = Mask::new(r"(?i)\b(?:https?|ftp)://[^\s<>()\[\]]+");
    static EMAIL: Mask = Mask::new(r"(?i)[a-z0-9._%+\-=/]+@[a-z0-9\-]+(?:\.[a-z0-9\-]+)*");
    static IPV4: Mask = Mask::new(r"\b\d{1,3}(?:\.\d{1,3}){3}\b");
    static ENHANCED: Mask = Mask::new(r"\b[245]\.\d{1,3}\.\d{1,3}\b");
    static DOTTED: Mask = Mask::new(r"(?i)\b[a-z0-9\-]+(?:\.[a-z0-9\-]+)+\b");
    static ALNUM: Mask = Mask::new(r"\b[\p{L}\p{N}_]+\b");

    /// A hand scanner: the byte ranges of its matches in a text.
    type Scanner = fn(&str) -> Vec<Range<usize>>;

    /// Each hand scanner beside the regex it replaced.
    fn scanners() -> [(&'static str, Scanner, &'static Mask); 6] {
        [
            ("urls", urls, &URL),
            ("emails", emails, &EMAIL),
            ("ipv4s", ipv4s, &IPV4),
            ("enhanced_codes", enhanced_codes, &ENHANCED),
            ("dotted_names", dotted_names, &DOTTED),
            ("alnum_words", alnum_words, &ALNUM),
        ]
    }

    fn assert_scanners_as_reference(text: &str) {
        for (name, scan, mask) in scanners() {
            let reference: Vec<Range<usize>> = mask.regex().find_iter(text).map(|m| m.range()).collect();
            assert_eq!(scan(text), reference, "{name}({text:?})");
        }
    }

    #[test]
    fn character_classes_are_the_regex_classes() {
        let class = |pattern: &str| Regex::new(pattern).expect("valid pattern");
        let (word_end, digit, space) = (class(r"^a\b"), class(r"^\d$"), class(r"^\s$"));
        let (host, local) = (class(r"(?i)^[a-z0-9\-]$"), class(r"(?i)^[a-z0-9._%+\-=/]$"));
        let alnum = class(r"^[\p{L}\p{N}_]$");
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            let mut buf = [0; 4];
            let one = &*c.encode_utf8(&mut buf);
            assert_eq!(is_word_char(c), !word_end.is_match(&format!("a{c}")), "word {c:?}");
            assert_eq!(is_decimal(c), digit.is_match(one), "decimal {c:?}");
            assert_eq!(c.is_whitespace(), space.is_match(one), "space {c:?}");
            assert_eq!(is_host_char(c), host.is_match(one), "host {c:?}");
            assert_eq!(is_local_part_char(c), local.is_match(one), "local part {c:?}");
            assert_eq!(is_alnum(c), alnum.is_match(one), "alnum {c:?}");
        }
    }

    #[test]
    fn scanners_equal_their_regexes_on_the_training_corpus() {
        for text in crate::classify::testdata::own_corpus_texts() {
            let masked = normalise(&text);
            for variant in [&text, &text.to_uppercase(), &text.replace('s', "\u{17F}"), &masked] {
                assert_scanners_as_reference(variant);
            }
        }
    }

    #[test]
    fn scanners_equal_their_regexes_on_random_text() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        // What the patterns turn on: digits (ASCII and not), dots, `@`, `:`, `/`, hyphens, underscores, the
        // other local-part characters, scheme words, letters whose case folds (`ſ`, `K`), word characters
        // that are not name characters (é, ß, combining marks, CJK), non-word numbers (²), spaces.
        const PIECES: &[&str] = &[
            "a", "Z", "x", "s", "S", "\u{17F}", "k", "\u{212A}", "é", "e\u{301}", "\u{301}", "ß", "名", "²", "٣", "५",
            "_", "-", "--", ".", "..", "@", "@@", ":", "::", "/", "://", "http", "HTTPS", "htTp\u{17F}", "ftp",
            "%", "+", "=", " ", "\u{a0}", "\u{3000}", "\t", "<", ">", "(", ")", "[", "]", "'", "0", "1", "5", "25",
            "256", "1234", "550", "2.", "5.1.1", "4.2.22", "5.1.1234", "192.0.2.1", "10.0.0", "mx1", "com", "co.uk",
            "user@example.org", "a.b", "-x.y-", "x.y_",
        ];
        let mut rng = StdRng::seed_from_u64(8);
        for _ in 0..10_000 {
            let n = rng.gen_range(0..20);
            let text: String = (0..n).map(|_| PIECES[rng.gen_range(0..PIECES.len())]).collect();
            assert_scanners_as_reference(&text);
        }
    }

    /// `normalise` as first written: one `Regex::replace_all` per pass (closures for the host and word
    /// masks). The fast version must give exactly its output.
    fn reference_normalise(text: &str) -> String {
        use regex::Captures;
        let reference_mask_word = |word: &str| -> String {
            let digits = word.chars().filter(char::is_ascii_digit).count();
            if digits == 0 || word.starts_with("st") && word.contains('_') {
                return word.to_string();
            }
            let len = word.chars().count();
            if digits == len {
                let is_reply = len == 3 && matches!(word.as_bytes()[0], b'2' | b'4' | b'5');
                return if is_reply { word.to_string() } else { "num".to_string() };
            }
            if len >= 6 { "idx".to_string() } else { word.to_string() }
        };
        let mut s: String = text
            .chars()
            .take(MAX_TEXT_CHARS)
            .map(|c| if c.is_control() || c == '\u{FFFD}' { ' ' } else { c })
            .collect();
        // The status code's parts as groups, for the `$n` replacement; the other passes use the shipped masks.
        static ENHANCED_GROUPS: OnceLock<Regex> = OnceLock::new();
        let enhanced_groups =
            ENHANCED_GROUPS.get_or_init(|| Regex::new(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b").expect("valid pattern"));
        if s.contains("://") {
            s = URL.regex().replace_all(&s, " urlx ").into_owned();
        }
        if s.contains('@') {
            s = EMAIL.regex().replace_all(&s, " emailx ").into_owned();
        }
        let has_digit = s.bytes().any(|b| b.is_ascii_digit());
        if has_digit && s.contains('.') {
            s = IPV4.regex().replace_all(&s, " ipx ").into_owned();
            s = enhanced_groups.replace_all(&s, " st${1}_${2}_${3} ").into_owned();
        }
        if s.contains("::") || s.bytes().filter(|&b| b == b':').count() >= 3 {
            s = IPV6.regex().replace_all(&s, " ipx ").into_owned();
        }
        if s.contains('.') {
            s = DOTTED
                .regex()
                .replace_all(&s, |c: &Captures| {
                    let whole = &c[0];
                    let last = whole.rsplit('.').next().unwrap_or("");
                    let tld_like = (2..=6).contains(&last.len()) && last.chars().all(|ch| ch.is_ascii_alphabetic());
                    if tld_like { " hostx ".to_string() } else { whole.to_string() }
                })
                .into_owned();
        }
        if has_digit {
            s = ALNUM.regex().replace_all(&s, |c: &Captures| reference_mask_word(&c[0])).into_owned();
        }
        s
    }

    /// `words` as first written: NFKC and lowercasing of every character, then the split.
    fn reference_words(normalised: &str) -> Vec<String> {
        use unicode_normalization::UnicodeNormalization;
        let mut out = Vec::new();
        let mut cur = String::new();
        let mut cur_word = false;
        for c in normalised.nfkc().flat_map(char::to_lowercase) {
            if c.is_whitespace() {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                continue;
            }
            let is_word = c.is_alphanumeric() || c == '_';
            if !cur.is_empty() && is_word != cur_word {
                out.push(std::mem::take(&mut cur));
            }
            cur_word = is_word;
            cur.push(c);
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    fn assert_same_as_reference(text: &str) {
        let fast = normalise(text);
        assert_eq!(fast, reference_normalise(text), "normalise({text:?})");
        assert_eq!(words(&fast), reference_words(&fast), "words({fast:?})");
        assert_eq!(words(text), reference_words(text), "words({text:?})");
    }

    #[test]
    fn fast_normalise_and_words_equal_the_regex_versions_on_the_training_corpus() {
        for text in crate::classify::testdata::own_corpus_texts() {
            for variant in [text.clone(), text.to_uppercase(), strip_codes(&text), format!("{text} Ｍａｉｌ–box ²ⅲ 名前")] {
                assert_same_as_reference(&variant);
            }
        }
    }

    #[test]
    fn fast_normalise_and_words_equal_the_regex_versions_on_random_text() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        // Pieces that trigger every pass and its edge cases: dots, dashes and underscores around host names,
        // codes, IPv4/IPv6, addresses, URLs, ids, control characters, NFKC-changing and non-Latin characters.
        const PIECES: &[&str] = &[
            "a", "Z", "x", "mx1", "com", "ORG", "é", "ß", "İ", "Ⅻ", "²", "٣", "ﬁ", "Ｆ", "名", "\u{301}", "_", "-",
            ".", "..", "@", ":", "::", "/", "://", "http", "ftp", " ", "  ", "\t", "\n", "\r", "\u{0}",
            "\u{7f}", "\u{85}", "\u{a0}", "\u{FFFD}", "\u{2028}", "0", "1", "5", "25", "550", "5.1.1",
            "4.2.2.", "192.0.2.1", "fe80::1", "2001:db8::", "st5_1_1", "DB5EUR03FT012", "user@example.org",
            "<", ">", "(", ")", "[", "]", "#", "'", "\"", ";", ",",
        ];
        let mut rng = StdRng::seed_from_u64(6);
        for _ in 0..20_000 {
            let n = rng.gen_range(0..24);
            let text: String = (0..n).map(|_| PIECES[rng.gen_range(0..PIECES.len())]).collect();
            assert_same_as_reference(&text);
        }
        assert_same_as_reference(&"ab1.cd ".repeat(600));
        assert_same_as_reference(&"é".repeat(3000));
    }

    /// A feature of the first version: its row and its name.
    #[derive(Debug, PartialEq)]
    struct Feature {
        row: u32,
        name: String,
    }

    /// `Layout::text_features` as first written (every n-gram encoded to bytes, every hash from the start).
    fn reference_text_features(layout: &Layout, tokens: &[String], ids: &[u32], unk: u32, out: &mut Vec<Feature>) {
        let gram_bytes = |chars: &[char], buf: &mut [u8; 32]| {
            let mut len = 0;
            for &c in chars {
                if len + c.len_utf8() > buf.len() {
                    break;
                }
                len += c.encode_utf8(&mut buf[len..]).len();
            }
            len
        };
        let mut buf = [0u8; 32];
        let mut chars: Vec<char> = Vec::new();
        let mut next_chars: Vec<char> = Vec::new();
        for (i, word) in tokens.iter().enumerate() {
            let id = ids.get(i).copied().unwrap_or(unk);
            if id != unk && id < layout.vocab {
                out.push(Feature { row: id, name: format!("w:{word}") });
            }
            let next = tokens.get(i + 1);
            if let Some(next) = next {
                let row = layout.row_of(fnv1a(&[b"b", word.as_bytes(), next.as_bytes()]));
                out.push(Feature { row, name: format!("b:{word} {next}") });
            }
            if !word.chars().all(char::is_alphabetic) {
                continue;
            }
            chars.clear();
            chars.push('<');
            chars.extend(word.chars());
            chars.push('>');
            let mut gram = |g: &[char], out: &mut Vec<Feature>| {
                let len = gram_bytes(g, &mut buf);
                let row = layout.row_of(fnv1a(&[b"c", &buf[..len]]));
                out.push(Feature { row, name: format!("c:{}", g.iter().collect::<String>()) });
            };
            for n in 3..=5 {
                if chars.len() < n {
                    break;
                }
                for g in chars.windows(n) {
                    gram(g, out);
                }
            }
            if chars.len() - 2 >= ANAGRAM_MIN_LETTERS {
                let mut letters: Vec<char> = word.chars().collect();
                letters.sort_unstable();
                let sorted: String = letters.into_iter().collect();
                let row = layout.row_of(fnv1a(&[b"a", sorted.as_bytes()]));
                out.push(Feature { row, name: format!("a:{sorted}") });
            }
            if let Some(next) = next.filter(|w| w.chars().all(char::is_alphabetic)) {
                let left = &chars[1..chars.len() - 1];
                let tail = &left[left.len().saturating_sub(3)..];
                next_chars.clear();
                next_chars.extend(tail.iter().copied());
                let tail_len = next_chars.len();
                next_chars.extend(next.chars().take(3));
                for (k, g) in next_chars.windows(4).enumerate() {
                    if k < tail_len && k + 4 > tail_len {
                        gram(g, out);
                    }
                }
            }
        }
    }

    #[test]
    fn text_features_equal_the_first_version_with_names_and_without() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        const WORDS: &[&str] = &["mailbox", "full", "a", "of", "é", "ünknown", "名前", "x1", "550", ":", "", "ab",
            "abc", "st5_1_1", "ﬁle", "ǅx", "quota", "exceeded", "user", "😀", "ßü"];
        let mut rng = StdRng::seed_from_u64(6);
        for layout in [Layout { vocab: 10, buckets: 1 << 15, signal_buckets: 8 }, Layout { vocab: 3, buckets: 1000, signal_buckets: 8 }] {
            for _ in 0..2000 {
                let n = rng.gen_range(0..8);
                let tokens: Vec<String> = (0..n).map(|_| WORDS[rng.gen_range(0..WORDS.len())].to_string()).collect();
                let ids: Vec<u32> = tokens.iter().map(|_| rng.gen_range(0..12)).collect();
                let mut want = Vec::new();
                reference_text_features(&layout, &tokens, &ids, 0, &mut want);
                let named = layout.text_features(&tokens, &ids, 0, true);
                assert_eq!(named.rows, want.iter().map(|f| f.row).collect::<Vec<_>>(), "{tokens:?}");
                assert_eq!(named.names, want.iter().map(|f| f.name.clone()).collect::<Vec<_>>(), "{tokens:?}");
                let plain = layout.text_features(&tokens, &ids, 0, false);
                assert_eq!((plain.rows, plain.names.len()), (named.rows, 0));
            }
        }
    }

    #[test]
    fn words_are_normalised_lowercase_runs() {
        assert_eq!(words("User  UNKNOWN: (#5) ＦＵＬＬ"), ["user", "unknown", ":", "(#", "5", ")", "full"]);
    }

    #[test]
    fn exchange_dotted_codes_are_not_hosts() {
        let n = normalise("RESOLVER.ADR.RecipNotFound; not found");
        assert!(n.contains("RecipNotFound"), "{n}");
    }

    #[test]
    fn control_characters_and_replacement_chars_become_spaces_and_long_text_is_cut() {
        assert_eq!(normalise("a\u{0}b\u{FFFD}c").split_whitespace().count(), 3);
        let long = "x ".repeat(10_000);
        assert!(normalise(&long).chars().count() <= MAX_TEXT_CHARS * 2);
    }

    #[test]
    fn strip_codes_removes_status_and_reply_codes() {
        assert_eq!(strip_codes("550-5.1.1 user unknown (#5.1.1)"), "user unknown");
        assert_eq!(strip_codes("550 mailbox full"), "mailbox full");
    }

    #[test]
    fn spacing_variants_share_character_grams() {
        let layout = Layout { vocab: 0, buckets: 1 << 20, signal_buckets: 64 };
        let feats = |t: &[&str]| {
            let toks: Vec<String> = t.iter().map(|s| s.to_string()).collect();
            layout.text_features(&toks, &vec![0; toks.len()], 0, false).rows.into_iter().collect::<std::collections::HashSet<_>>()
        };
        let a = feats(&["mailbox", "full"]);
        let b = feats(&["mail", "box", "full"]);
        let shared = a.intersection(&b).count();
        assert!(shared * 2 > a.len().min(b.len()), "shared {shared} of {} / {}", a.len(), b.len());
    }

    #[test]
    fn a_letter_swap_keeps_the_anagram_key() {
        let layout = Layout { vocab: 0, buckets: 1 << 20, signal_buckets: 64 };
        let named = |w: &str| {
            let out = layout.text_features(&[w.to_string()], &[0], 0, true);
            out.rows.into_iter().zip(out.names).filter(|(_, name)| name.starts_with("a:")).collect::<Vec<_>>()
        };
        assert_eq!(named("mailbox"), named("mialbox"));
        assert_eq!(named("mailbox")[0].1, "a:abilmox");
        assert_ne!(named("mailbox"), named("maibox"));
        assert!(named("full").len() == 1 && named("box").is_empty());
    }

    /// `Signals::each_token` as first written, every token through `format!`.
    fn reference_tokens(s: &Signals, prior: &str) -> Vec<String> {
        let mut out = vec![format!("kind={}", s.kind.map_or("text", Kind::as_str))];
        let code = s.status.as_deref().and_then(status::parse_enhanced);
        match code {
            Some((class, subject, detail)) => out.extend([
                format!("sc={class}"),
                format!("ss={class}.{subject}"),
                format!("sd={subject}.{detail}"),
                format!("sx={class}.{subject}.{detail}"),
            ]),
            None => out.push("sc=none".into()),
        }
        match s.reply_code {
            Some(code) => out.extend([format!("rc={code}"), format!("rcc={}", code / 100)]),
            None => out.push("rc=none".into()),
        }
        out.push(format!("act={}", s.action.as_deref().unwrap_or("none")));
        let command = s.smtp_command.as_deref().unwrap_or("none");
        out.push(format!("cmd={command}"));
        out.push(match code {
            Some((class, subject, _)) => format!("cmd&ss={command}/{class}.{subject}"),
            None => format!("cmd&rcc={command}/{}", s.reply_code.map_or(0, |c| c / 100)),
        });
        out.extend([format!("cmd&prior={command}/{prior}"), format!("prior={prior}")]);
        out
    }

    #[test]
    fn signal_tokens_equal_the_formatted_ones() {
        let statuses = [None, Some("5.1.1"), Some("4.7.0"), Some("2.0.0"), Some("5.999.999"), Some("5.10.100"),
            Some("x"), Some("5.1"), Some(" 4.2.2 ")];
        let replies = [None, Some(0), Some(9), Some(10), Some(99), Some(250), Some(421), Some(550), Some(999),
            Some(1000), Some(u16::MAX)];
        let mut checked = 0;
        for status in statuses {
            for reply_code in replies {
                for (kind, action, command) in [(None, None, None), (Some(Kind::Dsn), Some("failed"), Some("DATA"))] {
                    let s = Signals {
                        kind,
                        status: status.map(String::from),
                        reply_code,
                        action: action.map(String::from),
                        smtp_command: command.map(String::from),
                    };
                    let mut got = Vec::new();
                    s.each_token("userunknown", |t| got.push(t.to_string()));
                    assert_eq!(got, reference_tokens(&s, "userunknown"), "{s:?}");
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 198);
        for n in [0, 1, 9, 10, 99, 100, 12345, u32::MAX] {
            let mut buf = String::new();
            push_number(&mut buf, n);
            assert_eq!(buf, n.to_string());
        }
    }

    #[test]
    fn signal_tokens_carry_codes_and_prior() {
        let s = Signals { kind: Some(Kind::Dsn), status: Some("5.2.2".into()), reply_code: Some(552), ..Signals::default() };
        let t = s.tokens();
        for want in ["kind=dsn", "sc=5", "sd=2.2", "rc=552", "prior=mailboxfull", "cmd=none", "cmd&ss=none/5.2",
            "cmd&prior=none/mailboxfull"] {
            assert!(t.iter().any(|x| x == want), "{want} in {t:?}");
        }
        assert!(s.permanent());
        let data = Signals {
            status: Some("5.1.1".into()),
            smtp_command: Some("DATA".into()),
            ..Signals::default()
        };
        let t = data.tokens();
        for want in ["kind=text", "cmd&ss=DATA/5.1", "cmd&prior=DATA/userunknown"] {
            assert!(t.iter().any(|x| x == want), "{want} in {t:?}");
        }
        let bare = Signals { reply_code: Some(421), smtp_command: Some("CONN".into()), ..Signals::default() };
        assert!(bare.tokens().iter().any(|x| x == "cmd&rcc=CONN/4"), "{:?}", bare.tokens());
    }
}
