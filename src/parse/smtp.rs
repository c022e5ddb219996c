//! SMTP signals inside diagnostic text: the reply code (RFC 5321 §4.2), the enhanced status code
//! (RFC 3463 `class.subject.detail`) and the SMTP command that was answered.

use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, Input, MatchKind};

/// Whether the byte before `i` allows a code to start there (not part of a longer number or word). A status
/// code may follow `-` (`550-5.7.26`); a reply code may not (`id-550`).
fn boundary_before(b: &[u8], i: usize, strict: bool) -> bool {
    i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'.' || (strict && b[i - 1] == b'-'))
}

/// Positions where a code can start (its class digit 2, 4 or 5), found with memchr.
fn code_starts(b: &[u8]) -> impl DoubleEndedIterator<Item = usize> + '_ {
    memchr::memchr3_iter(b'2', b'4', b'5', b)
}

/// The enhanced status code starting at byte `i`, if one does (`class.subject.detail`, 1–3 digits each, not
/// followed by more of a dotted number).
fn status_at(b: &[u8], i: usize) -> Option<String> {
    if !matches!(b.get(i), Some(b'2' | b'4' | b'5')) || b.get(i + 1) != Some(&b'.') {
        return None;
    }
    let digits = |from: usize| {
        let mut k = from;
        while k < b.len() && b[k].is_ascii_digit() && k - from < 3 {
            k += 1;
        }
        k
    };
    let j = digits(i + 2);
    if j == i + 2 || b.get(j) != Some(&b'.') {
        return None;
    }
    let k = digits(j + 1);
    if k == j + 1 {
        return None;
    }
    let ends_clean = match b.get(k) {
        None => true,
        Some(c) => !(c.is_ascii_alphanumeric() || (*c == b'.' && b.get(k + 1).is_some_and(u8::is_ascii_digit))),
    };
    // Only ASCII bytes were read, so the range is valid UTF-8.
    ends_clean.then(|| b[i..k].iter().map(|&c| c as char).collect())
}

/// Finds the first RFC 3463 enhanced status code (`2.x.x`, `4.x.x`, `5.x.x`) in `text`. A dotted quad such
/// as an IPv4 address is not a status code.
pub(crate) fn enhanced_status(text: &str) -> Option<String> {
    let b = text.as_bytes();
    code_starts(b).find_map(|i| if boundary_before(b, i, false) { status_at(b, i) } else { None })
}

/// The reply code starting at byte `i`, if one stands there as its own token.
fn reply_at(b: &[u8], i: usize) -> Option<u16> {
    if i + 2 >= b.len() || !b[i + 2].is_ascii_digit() || !boundary_before(b, i, true) {
        return None;
    }
    // RFC 5321 §4.2: 2yz replies in use are 211, 214, 220, 221, 250–252; failures are 4yz and 5yz, y in 0..=5.
    let plausible = matches!(
        (b[i], b[i + 1], b[i + 2]),
        (b'2', b'1', b'1' | b'4') | (b'2', b'2', b'0' | b'1') | (b'2', b'5', b'0'..=b'2') | (b'4' | b'5', b'0'..=b'5', _)
    );
    if !plausible {
        return None;
    }
    let ok = match b.get(i + 3) {
        None => true,
        // "550-5.7.1" and "550-Mailbox" are multi-line replies; "555-1234" is a phone number.
        Some(b'-') => match (b.get(i + 4), b.get(i + 5)) {
            (Some(d), Some(next)) if d.is_ascii_digit() => *next == b'.',
            _ => true,
        },
        Some(c) => matches!(c, b' ' | b')' | b'\t' | b',' | b']' | b';' | b':'),
    };
    ok.then(|| u16::from(b[i] - b'0') * 100 + u16::from(b[i + 1] - b'0') * 10 + u16::from(b[i + 2] - b'0'))
}

/// Finds the first plausible SMTP reply code (2yz, 4yz, 5yz with y in 0..=5) standing as its own token, e.g.
/// `550 `, `550-`, `#550`, `(550)`. Numbers inside longer numbers, dates or addresses are skipped.
pub(crate) fn reply_code(text: &str) -> Option<u16> {
    let b = text.as_bytes();
    code_starts(b).find_map(|i| reply_at(b, i))
}

/// The reply code and enhanced status code that a diagnostic reports, read as a remote server's reply.
///
/// A diagnostic often quotes more than one reply: a transcript (`250 2.1.5 Ok … 451 4.3.0 Error`), a
/// wrapper around the remote answer (`5.1.0 - Unknown address error 550-'5.2.2 Mailbox full'`,
/// `554 4.4.7 Message expired <421 4.4.2 Connection timed out>`). The reply that explains the failure is the
/// last failure reply (4yz/5yz) carrying an enhanced status; without one, the first status and the first
/// reply code found are used.
pub(crate) fn codes(text: &str) -> (Option<u16>, Option<String>) {
    let (reply, status, _) = failure_reply(text);
    (reply, status)
}

/// [`codes`] plus the byte position of the reply that explains the failure, when there is one.
fn failure_reply(text: &str) -> (Option<u16>, Option<String>, Option<usize>) {
    let b = text.as_bytes();
    let mut best: Option<(u16, String, usize)> = None;
    for pos in code_starts(b) {
        let Some(code) = reply_at(b, pos).filter(|c| *c >= 400) else { continue };
        // The enhanced status follows the reply code after separators: "550 5.1.1", "550-'5.2.2", "550 #5.7.1".
        let mut j = pos + 3;
        while j < b.len() && j < pos + 8 && matches!(b[j], b' ' | b'-' | b'\'' | b'"' | b'#' | b'(' | b'\t') {
            j += 1;
        }
        if let Some(status) = status_at(b, j) {
            best = Some((code, status, pos));
        }
    }
    match best {
        Some((code, status, pos)) => (Some(code), Some(status), Some(pos)),
        None => {
            // "554 <a@b>... 550 Host unknown": the remote reply quoted last explains the failure.
            let last_failure =
                code_starts(b).rev().find_map(|i| reply_at(b, i).filter(|c| *c >= 400).map(|c| (c, i)));
            match last_failure {
                Some((code, pos)) => (Some(code), enhanced_status(text), Some(pos)),
                None => (reply_code(text), enhanced_status(text), None),
            }
        }
    }
}

/// Phrases naming the SMTP command a reply answered, and that command. One case-insensitive pass finds the
/// earliest: a transcript mentions commands in order and prose names the failing one first.
const COMMAND_PHRASES: &[(&str, &str)] = &[
    ("end of data", "DATA"),
    ("after data", "DATA"),
    ("data command", "DATA"),
    ("message body", "DATA"),
    ("after end of", "DATA"),
    ("final data", "DATA"),
    (">>> data", "DATA"),
    ("in: data", "DATA"),
    ("(data)", "DATA"),
    ("failed after i sent the message", "DATA"),
    ("text command", "DATA"),
    ("rcpt to", "RCPT"),
    ("rcpt command", "RCPT"),
    (">>> rcpt", "RCPT"),
    ("rcpt_to", "RCPT"),
    ("smtp:rcpt", "RCPT"),
    ("does not like recipient", "RCPT"),
    ("mail from", "MAIL"),
    ("mail command", "MAIL"),
    (">>> mail", "MAIL"),
    ("sender was rejected", "MAIL"),
    ("ehlo", "HELO"),
    ("helo", "HELO"),
    ("my name was rejected", "HELO"),
    ("initial connection", "CONN"),
    ("refused to talk to me", "CONN"),
    ("greeting", "CONN"),
    ("banner", "CONN"),
    ("connect to", "CONN"),
    ("connection refused", "CONN"),
    ("connection timed out", "CONN"),
];

/// The case variants of an ASCII letter that Unicode case-insensitive matching adds beyond ASCII: `ſ`
/// (U+017F, LATIN SMALL LETTER LONG S) folds to `s` and `K` (U+212A, KELVIN SIGN) to `k`. The phrases were
/// matched by a `(?i)` regex, which took them; the search keeps doing so.
fn non_ascii_case_variant(c: char) -> Option<char> {
    match c {
        's' => Some('\u{17F}'),
        'k' => Some('\u{212A}'),
        _ => None,
    }
}

/// Every spelling of `phrase` with any of its `s` and `k` written as their non-ASCII case variant, the
/// phrase's own first. ASCII case is left to the searcher.
fn spellings(phrase: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    for c in phrase.chars() {
        let variant = non_ascii_case_variant(c);
        out = out
            .into_iter()
            .flat_map(|prefix| {
                let plain = format!("{prefix}{c}");
                let folded = variant.map(|v| format!("{prefix}{v}"));
                std::iter::once(plain).chain(folded)
            })
            .collect();
    }
    out
}

/// One case-insensitive leftmost-first search for all of [`COMMAND_PHRASES`].
struct CommandSearcher {
    automaton: AhoCorasick,
    /// Per pattern: the command it names (`None` for a spelling with a non-ASCII case variant, which names
    /// no command: the phrase lookup was by ASCII-lowercased text) ...
    commands: Vec<Option<&'static str>>,
    /// ... and whether it must start at an ASCII word boundary (the phrase starts with a letter or digit:
    /// "email from" is not "mail from"; `>>> data`, `(data)` start anywhere).
    needs_boundary: Vec<bool>,
}

/// A phrase found in a text: where it starts and the command it names, if any.
struct CommandMention {
    start: usize,
    command: Option<&'static str>,
}

impl CommandSearcher {
    /// The searcher for `text`: with the non-ASCII spellings only when `text` has `ſ` or `K` (rarely: the
    /// automaton with them has 53 patterns instead of 31 and costs twice as much to build).
    fn for_text(text: &str) -> &'static CommandSearcher {
        static PLAIN: LazyLock<CommandSearcher> = LazyLock::new(|| CommandSearcher::new(false));
        static ALL_SPELLINGS: LazyLock<CommandSearcher> = LazyLock::new(|| CommandSearcher::new(true));
        if !text.is_ascii() && text.contains(['\u{17F}', '\u{212A}']) { &ALL_SPELLINGS } else { &PLAIN }
    }

    /// The searcher for the phrases as written, and with `non_ascii_spellings` also for their
    /// [`spellings`] with `ſ` or `K`.
    fn new(non_ascii_spellings: bool) -> CommandSearcher {
        let mut patterns = Vec::new();
        let mut commands = Vec::new();
        let mut needs_boundary = Vec::new();
        // The spellings of one phrase are listed together, in the phrase's place: at one position at most one
        // of them matches, and the phrase listed first wins as it did in the regex alternation.
        for (phrase, command) in COMMAND_PHRASES {
            let spelt = if non_ascii_spellings { spellings(phrase) } else { vec![phrase.to_string()] };
            for spelling in spelt {
                commands.push((spelling == *phrase).then_some(*command));
                needs_boundary.push(phrase.starts_with(|c: char| c.is_ascii_alphanumeric()));
                patterns.push(spelling);
            }
        }
        let automaton = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostFirst)
            .build(&patterns)
            .expect("the command phrases form a valid automaton");
        CommandSearcher { automaton, commands, needs_boundary }
    }

    /// The phrases in `text`, in order, non-overlapping: at each step the earliest start, at one start the
    /// phrase listed first, the next search from the end of the last match (what `Regex::find_iter` over
    /// the alternation `(?i)(?-u:\b)end of data|...` gave).
    fn mentions<'a>(&'a self, text: &'a str) -> impl Iterator<Item = CommandMention> + 'a {
        let b = text.as_bytes();
        let is_word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        let mut at = 0;
        std::iter::from_fn(move || {
            while at < b.len() {
                let m = self.automaton.find(Input::new(text).span(at..b.len()))?;
                let id = m.pattern().as_usize();
                let prev_is_word = m.start() > 0 && is_word(b[m.start() - 1]);
                if self.needs_boundary[id] && prev_is_word == is_word(b[m.start()]) {
                    // No phrase matches here: any other that could starts with a word character too.
                    at = m.start() + 1;
                    continue;
                }
                at = m.end();
                return Some(CommandMention { start: m.start(), command: self.commands[id] });
            }
            None
        })
    }
}

/// Which SMTP command the diagnostic answers, from the wording MTAs use ("in reply to RCPT TO command",
/// "after end of data", "SMTP error from remote mail server after MAIL FROM", a `>>> RCPT To:` transcript
/// line, ...). The command named last before the failure reply is the one it answered ("after RCPT TO:<a>:
/// 550 …", a transcript); without one before it, the first named after it ("550 … (in reply to RCPT TO
/// command)"). Returns `CONN`, `HELO`, `MAIL`, `RCPT` or `DATA`.
pub(crate) fn smtp_command(text: &str) -> Option<&'static str> {
    smtp_command_for(text, None)
}

/// [`smtp_command`] for the reply `code` when it is known (e.g. from a DSN's Diagnostic-Code): the command
/// is read around the first occurrence of that reply in `text` rather than around its last failure reply.
pub(crate) fn smtp_command_for(text: &str, code: Option<u16>) -> Option<&'static str> {
    let anchored = code.and_then(|c| reply_position(text, c));
    smtp_command_at(text, anchored.or_else(|| failure_reply(text).2))
}

/// Byte position of the first reply `code` standing as its own token in `text`.
pub(crate) fn reply_position(text: &str, code: u16) -> Option<usize> {
    let b = text.as_bytes();
    code_starts(b).find(|&i| reply_at(b, i) == Some(code))
}

/// [`smtp_command`] for the reply at byte `reply_pos` of `text`: the command named last before it, else the
/// first named after it (anywhere in `text` without a position).
pub(crate) fn smtp_command_at(text: &str, reply_pos: Option<usize>) -> Option<&'static str> {
    let mut before = None;
    let mut after = None;
    for m in CommandSearcher::for_text(text).mentions(text) {
        match reply_pos {
            Some(p) if m.start < p => before = Some(m),
            _ => {
                after = Some(m);
                break;
            }
        }
    }
    before.or(after)?.command
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
        assert_eq!(reply_code("cipher AES256 (256/256 bits)"), None);
        assert_eq!(reply_code("250 2.0.0 ok"), Some(250));
    }

    #[test]
    fn codes_take_the_failure_reply_that_explains() {
        assert_eq!(codes("550 5.1.1 unknown"), (Some(550), Some("5.1.1".into())));
        assert_eq!(
            codes("5.1.0 - Unknown address error 550-'5.2.2 <a@b.example>... Mailbox Full'"),
            (Some(550), Some("5.2.2".into()))
        );
        assert_eq!(
            codes("554 4.4.7 Message expired: unable to deliver in 840 minutes.<421 4.4.2 Connection timed out>"),
            (Some(421), Some("4.4.2".into()))
        );
        assert_eq!(
            codes("Out: 250 2.1.5 Ok In: DATA Out: 451 4.3.0 Error: queue file write error Out: 221 2.0.0 Bye"),
            (Some(451), Some("4.3.0".into()))
        );
        assert_eq!(codes("553 sorry, in my badrcptto list (#5.7.1)"), (Some(553), Some("5.7.1".into())));
        assert_eq!(codes("250 2.1.5 Ok"), (Some(250), Some("2.1.5".into())));
        assert_eq!(codes("no codes"), (None, None));
        assert_eq!(codes("554 <a@b.example>... 550 Host unknown"), (Some(550), None));
        assert_eq!(codes("<a@b.example>: 550: : User unknown"), (Some(550), None));
    }

    #[test]
    fn smtp_command_from_wording() {
        assert_eq!(smtp_command("550 5.1.1 unknown (in reply to RCPT TO command)"), Some("RCPT"));
        assert_eq!(smtp_command("SMTP error from remote mail server after end of data: 554"), Some("DATA"));
        assert_eq!(smtp_command("SMTP error from remote mail server after MAIL FROM:<a@b.example>"), Some("MAIL"));
        assert_eq!(smtp_command("550 user unknown"), None);
        assert_eq!(smtp_command("did not like our final DATA: 550 email from x rejected"), Some("DATA"));
        assert_eq!(smtp_command("550 email from example.jp not accepted"), None);
        let transcript = ">>> MAIL From:<a@b.example>\n<<< 250 ok\n>>> RCPT To:<c@d.example>\n<<< 550 5.1.1 unknown";
        assert_eq!(smtp_command(transcript), Some("RCPT"));
        let postfix = "In: RCPT TO:<a@b.example> Out: 250 2.1.5 Ok In: DATA Out: 354 go Out: 451 4.3.0 Error";
        assert_eq!(smtp_command(postfix), Some("DATA"));
        let qmail_rcpt = "192.0.2.1 does not like recipient.\nRemote host said: 550 5.1.1 unknown\nGiving up on 192.0.2.1.";
        assert_eq!(smtp_command(qmail_rcpt), Some("RCPT"));
        assert_eq!(smtp_command("192.0.2.1 failed after I sent the message. Remote host said: 554 spam"), Some("DATA"));
        assert_eq!(smtp_command("Connected to 192.0.2.1 but my name was rejected."), Some("HELO"));
        assert_eq!(smtp_command("host mx.example.org[192.0.2.1] refused to talk to me: 554 Blocked"), Some("CONN"));
        assert_eq!(smtp_command("Remote host said: 550 5.2.2 <a@b.example>... Mailbox Full [RCPT_TO]"), Some("RCPT"));
        let refused = "refused to accept your message (DATA), with the following error message: [554 5.4.6 Hop count]";
        assert_eq!(smtp_command(refused), Some("DATA"));
        assert_eq!(smtp_command("SMTP error from remote server for TEXT command, reason: 550 5.2.0 rejected"), Some("DATA"));
        let rejected_then_data = ">>> RCPT To:<a@b.example>\n<<< 550 5.1.1 invalid\n>>> DATA\n<<< 503 5.5.0 need RCPT";
        assert_eq!(smtp_command_for(rejected_then_data, Some(550)), Some("RCPT"));
    }

    /// The regex the phrase search replaced, as it was: the reference the searcher must equal.
    fn reference_command_regex() -> &'static regex::Regex {
        static RE: LazyLock<regex::Regex> = LazyLock::new(|| {
            let alternation: Vec<String> = COMMAND_PHRASES
                .iter()
                .map(|(p, _)| {
                    if p.starts_with(|c: char| c.is_ascii_alphanumeric()) {
                        format!(r"(?-u:\b){}", regex::escape(p))
                    } else {
                        regex::escape(p)
                    }
                })
                .collect();
            regex::Regex::new(&format!("(?i){}", alternation.join("|"))).expect("command phrases form a valid regex")
        });
        &RE
    }

    /// The phrases found by the reference regex: start and the command the lookup of the found text names.
    fn reference_mentions(text: &str) -> Vec<(usize, Option<&'static str>)> {
        reference_command_regex()
            .find_iter(text)
            .map(|m| {
                let found = m.as_str().to_ascii_lowercase();
                (m.start(), COMMAND_PHRASES.iter().find(|(p, _)| *p == found).map(|(_, cmd)| *cmd))
            })
            .collect()
    }

    /// `smtp_command_at` on the reference regex.
    fn reference_command_at(text: &str, reply_pos: Option<usize>) -> Option<&'static str> {
        let mentions = reference_mentions(text);
        let before = reply_pos.and_then(|p| mentions.iter().rev().find(|(start, _)| *start < p));
        let after = mentions.iter().find(|(start, _)| reply_pos.is_none_or(|p| *start >= p));
        before.or(after)?.1
    }

    fn assert_command_search_as_reference(text: &str) {
        let reference = reference_mentions(text);
        // The searcher chosen for the text, and the one with every spelling (chosen for a text with `ſ`).
        for searcher in [CommandSearcher::for_text(text), CommandSearcher::for_text("\u{17F}")] {
            let found: Vec<(usize, Option<&str>)> = searcher.mentions(text).map(|m| (m.start, m.command)).collect();
            assert_eq!(found, reference, "mentions in {text:?}");
        }
        let mut positions = vec![None, Some(0), Some(text.len() / 2), Some(text.len())];
        positions.extend(reference.iter().flat_map(|(start, _)| [Some(*start), Some(start + 1)]));
        positions.extend(code_starts(text.as_bytes()).map(Some));
        for pos in positions {
            assert_eq!(smtp_command_at(text, pos), reference_command_at(text, pos), "{text:?} at {pos:?}");
        }
    }

    #[test]
    fn only_long_s_and_kelvin_sign_fold_onto_ascii_letters() {
        // The searcher spells out these two; any other non-ASCII case variant of an ASCII letter would be missed.
        let letter = regex::Regex::new("(?i)^[a-z]$").expect("valid pattern");
        let folds = |c: &char| letter.is_match(c.encode_utf8(&mut [0; 4]));
        let folding: Vec<char> = (0x80..=0x10FFFF).filter_map(char::from_u32).filter(folds).collect();
        assert_eq!(folding, ['\u{17F}', '\u{212A}']);
        assert_eq!(spellings("ask"), ["ask", "as\u{212A}", "a\u{17F}k", "a\u{17F}\u{212A}"]);
    }

    #[test]
    fn command_search_equals_the_regex_on_the_training_corpus() {
        for text in crate::classify::testdata::own_corpus_texts() {
            for variant in [text.clone(), text.to_uppercase(), text.replace('s', "\u{17F}")] {
                assert_command_search_as_reference(&variant);
            }
        }
    }

    #[test]
    fn command_search_equals_the_regex_on_random_text() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        // Phrase pieces and what surrounds them: word characters and punctuation at the boundaries, case
        // variants (ASCII and the non-ASCII `ſ`, `K`), other non-ASCII letters and marks, digits and codes.
        const PIECES: &[&str] = &[
            "data", "DATA", "Data", "end of", "after", "end", "of", " ", "  ", "command", "message body", "final",
            ">>> ", ">>>", ">> ", "in: ", "in:", "(", ")", "(data)", "failed after i sent the message", "text",
            "rcpt", "RCPT", " to", "to", "_", "rcpt_to", "smtp:", "Smtp:rcpt", "does not like recipient", "mail",
            " from", "from", "sender was rejected", "ehlo", "HeLo", "helo", "my name was rejected", "initial",
            "connection", "refused to talk to me", "greeting", "banner", "connect to", "connection refused",
            "connection timed out", "\u{17F}", "\u{212A}", "K", "k", "s", "S", "e", "x", "é", "ß", "İ", "\u{301}",
            "名", "1", "550", "5.1.1", "250 ", ":", "@", ".", "/", "-", "\n", "\t", "<", ">",
        ];
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..5_000 {
            let n = rng.gen_range(0..16);
            let mut text: String = (0..n).map(|_| PIECES[rng.gen_range(0..PIECES.len())]).collect();
            if rng.gen_bool(0.3) {
                // Some letters swapped for their non-ASCII case variant, some for their upper case.
                text = text
                    .chars()
                    .map(|c| match (c, rng.gen_range(0..4)) {
                        ('s', 0) => '\u{17F}',
                        ('k', 0) => '\u{212A}',
                        (c, 1) => c.to_ascii_uppercase(),
                        (c, _) => c,
                    })
                    .collect();
            }
            assert_command_search_as_reference(&text);
        }
    }
}
