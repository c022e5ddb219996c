//! Free-text bounces (qmail, Exim, Sendmail, Exchange, Domino, Courier, providers…): recipients and their
//! diagnostics found generically, without a pattern list per MTA.
//!
//! The text before the returned message is scanned for addresses. Each address is scored by where it
//! stands: alone on its line (`<a@b>:`, `  a@b`, `RCPT To:<a@b>`), next to an SMTP reply or an enhanced
//! status code, in a sentence about recipients, or among the returned message's To/Cc; addresses of the
//! sender side (the report's own To, the original From/Return-Path, `From:` lines) are left out. Each
//! recipient's diagnostic is the block of lines that follows its mention (up to a blank line or the next
//! recipient), preferring the mention that carries a reply or status code.

use std::collections::HashSet;

use super::Recipient;
use super::smtp;
use super::text::{collapse_ws, find_addresses, find_ci, lines};

/// Most recipients kept from one free-text bounce.
const MAX_RECIPIENTS: usize = 100;
/// Most address mentions weighed in one bounce text (the scoring is quadratic in the distinct addresses; a
/// bounce names a handful, a text naming thousands is not a bounce to read address by address).
const MAX_MENTIONS: usize = 1000;
/// Most lines of one recipient's diagnostic block.
const MAX_BLOCK_LINES: usize = 8;
/// Longest diagnostic kept, in bytes.
const MAX_DIAGNOSTIC: usize = 2000;

/// What the caller knows about the addresses around the bounce.
#[derive(Debug, Default)]
pub(crate) struct Context {
    /// Addresses of the sender side (the report's To and From, the original From/Sender/Return-Path),
    /// lowercase. Scored down, not excluded: people do send to themselves.
    pub sender_side: HashSet<String>,
    /// Recipients of the returned message (To/Cc), lowercase: likely the failed ones.
    pub hints: HashSet<String>,
}

/// Header names that start the copy of the returned message when they stand at column 0.
const HEADER_NAMES: &[&str] = &[
    "received", "return-path", "message-id", "date", "from", "to", "cc", "subject", "mime-version",
    "content-type", "content-transfer-encoding", "dkim-signature", "domainkey-signature", "x-mailer",
    "reply-to", "delivered-to", "x-original-to", "authentication-results", "arc-seal", "arc-message-signature",
    "arc-authentication-results", "x-received", "sender", "references", "in-reply-to", "user-agent",
    "thread-topic", "thread-index", "list-unsubscribe", "precedence", "importance", "x-priority",
    "content-language", "accept-language", "x-ms-has-attach", "x-originating-ip", "organization", "errors-to",
];
/// Header names that only a copied header block has (not a bounce's prose or DSN fields).
const STRONG_HEADERS: &[&str] = &[
    "received", "return-path", "message-id", "mime-version", "dkim-signature", "domainkey-signature",
    "content-type", "x-mailer", "x-received", "arc-seal", "authentication-results", "references", "in-reply-to",
];
/// Lines (trimmed) starting with these introduce sender-side or bookkeeping addresses.
const SENDER_LINE_PREFIXES: &[&str] = &[
    "from:", "return-path:", "sender:", "reply-to:", "message-id:", "in-reply-to:", "references:", "received:",
    "dkim-signature:", "list-unsubscribe:", "errors-to:", "x-original-sender:", "envelope-from:", "mail from:",
    ">>> mail from", "x-postfix-sender:", "original-mail-from:", "x-sender:",
];
const SENDER_WORDS: &[&str] = &[
    "sender", "sent by", "originator", "return-path", "mail from", "unsubscribe",
    "contact your", "please contact", "reply to", "envelope-from", "from:", "generated from", "sent to you by",
];
const RECIPIENT_WORDS: &[&str] = &[
    "recipient", "rcpt", "to:", "user", "mailbox", "address", "deliver", "unknown", "exist", "no such",
    "rejected", "failed", "refused", "account", "quota", "full", "disabled", "invalid", "denied",
];

fn header_name(line: &str) -> Option<&str> {
    let colon = line.find(':')?;
    let name = &line[..colon];
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return None;
    }
    Some(name)
}

fn is_known_header(name: &str) -> bool {
    HEADER_NAMES.iter().any(|h| name.eq_ignore_ascii_case(h))
        || name.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("x-"))
}

fn is_strong_header(name: &str) -> bool {
    STRONG_HEADERS.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether a line is a field of a quoted header block (`  To: a@b.example`).
fn is_header_line(line: &str) -> bool {
    header_name(line.trim_start()).is_some_and(is_known_header)
}

/// The mention lines (indices into `lines`) to read an address's reasons from: a mention in a quoted header
/// line (`To: a@b.example`, as Exchange repeats the message's header fields above the list of failures)
/// starts a block of headers, not of reasons, so such lines are used only when the address is mentioned
/// nowhere else.
fn reason_lines(lines: &[&str], mentions: Vec<usize>) -> Vec<usize> {
    let prose: Vec<usize> = mentions.iter().copied().filter(|&i| !is_header_line(lines[i])).collect();
    if prose.is_empty() { mentions } else { prose }
}

/// Index of the first line of the returned message's header block, if the text carries a copy:
/// three or more header lines in a row, at least one of them only a header block would have. The copy may
/// be indented as a whole ("   Return-Path: …" with deeper-indented continuation lines).
fn returned_copy_start(lines: &[&str]) -> Option<usize> {
    let mut i = 0;
    while i < lines.len() {
        let indent_len = lines[i].len() - lines[i].trim_start_matches(' ').len();
        let indent = &lines[i][..indent_len.min(8)];
        let Some(name) = header_name(&lines[i][indent.len()..]).filter(|n| is_known_header(n)) else {
            i += 1;
            continue;
        };
        let mut count = 0;
        let mut strong = is_strong_header(name);
        let mut j = i;
        while j < lines.len() && j < i + 40 {
            let Some(l) = lines[j].strip_prefix(indent) else { break };
            if l.starts_with([' ', '\t']) && j > i {
                j += 1;
                continue;
            }
            match header_name(l).filter(|n| is_known_header(n)) {
                Some(n) => {
                    count += 1;
                    strong |= is_strong_header(n);
                }
                None => break,
            }
            j += 1;
        }
        if count >= 3 && strong && !is_quoted_excerpt(lines, indent, j) {
            return Some(i);
        }
        i = j.max(i + 1);
    }
    None
}

/// Whether an indented header block ending before line `end` is an excerpt the bounce quotes ("This report
/// relates to a message you sent with the following header fields:") rather than the returned copy: the
/// bounce's own unindented prose resumes after it. An indented copy's body stays indented.
fn is_quoted_excerpt(lines: &[&str], indent: &str, end: usize) -> bool {
    !indent.is_empty()
        && lines[end.min(lines.len())..]
            .iter()
            .find(|l| !l.trim().is_empty())
            .is_some_and(|l| !l.starts_with([' ', '\t']) && !is_separator(l))
}

/// One mention of an address on a line.
#[derive(Debug)]
struct Mention {
    line: usize,
    addr: String,
    key: String,
    score: i32,
    /// The line's shape around the address: the text before it and the first word after it.
    shape: (String, String),
}

/// The shape of a mention: what precedes the address on its line (trimmed) and the first word after it.
/// Lists of failed recipients repeat one shape ("<a@b>: host …", "a@b on Thu, …", "554 <a@b>... …").
fn shape(line: &str, start: usize, end: usize) -> (String, String) {
    let before = line[..start].trim().to_string();
    let after = line[end..].split_whitespace().next().unwrap_or("").to_string();
    (before, after)
}

fn has_code(line: &str) -> bool {
    smtp::enhanced_status(line).is_some() || smtp::reply_code(line).is_some()
}

fn score_mention(lines: &[&str], idx: usize, start: usize, end: usize) -> i32 {
    let line = lines[idx];
    let lower = line.to_ascii_lowercase();
    let mut score = 0;
    // What is left of the line without the address: alone on its line, or behind a short label.
    let rest: String = format!("{} {}", &line[..start], &line[end..]);
    let rest_words = rest
        .split(|c: char| c.is_whitespace() || "<>:;,()\"'[]=.".contains(c))
        .filter(|w| !w.is_empty())
        .count();
    if rest_words <= 3 {
        score += 2;
    }
    let window_has_code = lines[idx..lines.len().min(idx + 3)].iter().any(|l| has_code(l));
    if window_has_code {
        score += 2;
    }
    if RECIPIENT_WORDS.iter().any(|w| lower.contains(w)) {
        score += 1;
    }
    if SENDER_WORDS.iter().any(|w| lower.contains(w)) {
        score -= 3;
    }
    score
}

/// Whether a line is only decoration (`-----`, `=====`, `*****` rules and banners without words).
fn is_separator(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty()
        && (t.starts_with("---") || t.starts_with("===") || t.starts_with("***") || t.starts_with("___"))
        && (t.ends_with("---") || t.ends_with("===") || t.ends_with("***") || t.ends_with("___") || t.len() < 4)
}

/// The diagnostic block that starts at a mention: the mention line and the lines after it up to a blank
/// line, another recipient's mention or `MAX_BLOCK_LINES`. When nothing follows the mention directly and
/// the mention line says nothing after its address, or what follows ends with a colon ("because:"), the
/// next paragraph (after blank or rule lines) belongs to it; when nothing follows at all, the lines just
/// before it in its paragraph are its explanation ("Reason…\naddress"). A mention line that gives its
/// reason after the address ("a@b.example: Network error on destination MXs") is the whole block: the
/// paragraph after it is the report's boilerplate ("Please note that this is only a temporary failure
/// report"). Returns the block's text and the index just past it.
fn block(lines: &[&str], start: usize, other_mention_lines: &HashSet<usize>) -> (String, usize) {
    let mut kept: Vec<&str> = vec![lines[start]];
    let mut end = start + 1;
    let mut gap = 0;
    let explained = says_more_after_its_addresses(lines[start]);
    while end < lines.len() && kept.len() < MAX_BLOCK_LINES && !other_mention_lines.contains(&end) {
        let line = lines[end];
        if line.trim().is_empty() || is_separator(line) {
            let open = (kept.len() == 1 && !explained) || kept.last().is_some_and(|l| l.trim_end().ends_with(':'));
            if !open || gap >= 3 {
                break;
            }
            gap += 1;
        } else {
            gap = 0;
            kept.push(line);
        }
        end += 1;
    }
    if kept.len() == 1 {
        let mut first = start;
        while first > 0
            && start - first < 3
            && !lines[first - 1].trim().is_empty()
            && !is_separator(lines[first - 1])
            && !other_mention_lines.contains(&(first - 1))
        {
            first -= 1;
        }
        kept.splice(0..0, lines[first..start].iter().copied());
    }
    (truncate(collapse_ws(&kept.join(" "))), end)
}

/// Whether a line goes on after its last address with words of its own (at least
/// [`MIN_INFORMATIVE_CHARS`] letters and digits), rather than ending at the address ("addresses that
/// failed: a@b.example") or a colon.
fn says_more_after_its_addresses(line: &str) -> bool {
    let after = find_addresses(line).last().map_or("", |m| &line[m.end..]);
    !after.trim_end().ends_with(':') && after.chars().filter(|c| c.is_alphanumeric()).count() >= MIN_INFORMATIVE_CHARS
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_DIAGNOSTIC {
        let mut end = MAX_DIAGNOSTIC;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Fewest words a paragraph without codes needs to be read as the bounce's explanation: fewer make a
/// heading ("** Message not delivered **") or a salutation ("Hello a@b.example,").
const MIN_EXPLANATION_WORDS: usize = 4;

/// Whether a paragraph says something in sentences: at least [`MIN_EXPLANATION_WORDS`] words with a letter
/// that are not addresses.
pub(crate) fn is_explanation(lines: &[&str]) -> bool {
    lines
        .iter()
        .flat_map(|l| l.split_whitespace())
        .filter(|w| !w.contains('@') && w.chars().any(char::is_alphabetic))
        .nth(MIN_EXPLANATION_WORDS - 1)
        .is_some()
}

/// The paragraphs of `lines` as `(first, past_last)` line ranges; blank and rule lines separate them.
pub(crate) fn paragraphs(lines: &[&str]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, l) in lines.iter().enumerate() {
        match (l.trim().is_empty() || is_separator(l), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                out.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, lines.len()));
    }
    out
}

/// A notice that says in its opening paragraphs what became of a message, without SMTP replies or a list of
/// failed recipients (a mailing-list manager's "You are not a member of this mailing list <list>",
/// "Duplicated Message-ID in <list>"): the explanation runs from the first paragraph up to one that
/// introduces the quoted message (ending with a colon), at most `MAX_BLOCK_LINES` lines, and the address it
/// names first (of the sender side only when it names no other) is the one the message did not reach.
/// Returns that address and the explanation.
pub(crate) fn notice(lines: &[&str], ctx: &Context) -> Option<(String, String)> {
    let mut kept: Vec<&str> = Vec::new();
    for (s, e) in paragraphs(lines) {
        let paragraph = &lines[s..e];
        if kept.len() >= MAX_BLOCK_LINES
            || (!kept.is_empty() && paragraph.last().is_some_and(|l| l.trim_end().ends_with(':')))
        {
            break;
        }
        kept.extend(paragraph.iter().copied().filter(|l| !is_separator(l)));
    }
    kept.truncate(MAX_BLOCK_LINES);
    let text = truncate(collapse_ws(&kept.join(" ")));
    let found = find_addresses(&text);
    let addr = found
        .iter()
        .find(|m| !ctx.sender_side.contains(&m.addr.to_ascii_lowercase()))
        .or_else(|| found.first())?
        .addr
        .clone();
    Some((addr, text))
}

/// The first paragraph that carries an SMTP reply or status code, else the text from the first paragraph
/// that explains (not a heading or salutation, see [`is_explanation`]; else the first non-empty one), up to
/// `MAX_BLOCK_LINES` lines: the bounce's own explanation, used for recipients whose block says nothing.
pub(crate) fn global_diagnostic(lines: &[&str]) -> Option<String> {
    let paragraphs = paragraphs(lines);
    let with_code = paragraphs.iter().find(|(s, e)| lines[*s..*e].iter().any(|l| has_code(l)));
    let (s, e) = match with_code {
        Some(&(s, e)) => (s, e),
        None => {
            let (s, _) = paragraphs
                .iter()
                .find(|(s, e)| is_explanation(&lines[*s..*e]))
                .or_else(|| paragraphs.first())?;
            // The explanation may go on in the next paragraphs (a list of causes, "The response was:").
            let kept: Vec<usize> = (*s..lines.len())
                .filter(|&i| !(lines[i].trim().is_empty() || is_separator(lines[i])))
                .take(MAX_BLOCK_LINES)
                .collect();
            (*s, kept.last().map_or(*s, |l| l + 1))
        }
    };
    let kept: Vec<&str> =
        lines[s..e].iter().copied().filter(|l| !(l.trim().is_empty() || is_separator(l))).take(MAX_BLOCK_LINES).collect();
    let text = collapse_ws(&kept.join(" "));
    Some(truncate(text)).filter(|t| !t.is_empty())
}

/// Fewest letters and digits, besides the address, that a text needs to say something about a recipient.
const MIN_INFORMATIVE_CHARS: usize = 8;

/// Whether a diagnostic says more than the address itself (at least [`MIN_INFORMATIVE_CHARS`] letters and
/// digits besides it).
pub(crate) fn is_informative(diag: &str, addr: &str) -> bool {
    let without = match find_ci(diag, &addr.to_ascii_lowercase()) {
        Some(pos) => format!("{}{}", &diag[..pos], &diag[pos + addr.len()..]),
        None => diag.to_string(),
    };
    without.chars().filter(|c| c.is_alphanumeric()).count() >= MIN_INFORMATIVE_CHARS
}

/// A bounce's text split into lines once, with the start of the copy of the returned message, if any.
pub(crate) struct BounceText<'a> {
    lines: Vec<&'a str>,
    cut: usize,
}

impl<'a> BounceText<'a> {
    /// Splits `text` (any line ending) and finds where the returned message's copy starts.
    pub(crate) fn new(text: &'a str) -> BounceText<'a> {
        let lines: Vec<&str> = lines(text).collect();
        let cut = returned_copy_start(&lines).unwrap_or(lines.len());
        BounceText { lines, cut }
    }

    /// The bounce's own lines, before the copy of the returned message.
    pub(crate) fn before(&self) -> &[&'a str] {
        &self.lines[..self.cut]
    }

    /// The copied returned message (its header block first), if the text carries one.
    pub(crate) fn copy(&self) -> Option<String> {
        (self.cut < self.lines.len()).then(|| self.lines[self.cut..].join("\n"))
    }
}

/// Extracts the recipients of a free-text bounce. `strict` keeps only well-placed addresses (used when
/// nothing else says the message is a bounce).
pub(crate) fn recipients(text: &BounceText<'_>, ctx: &Context, strict: bool) -> Vec<Recipient> {
    let lines = text.before();
    let mut mentions: Vec<Mention> = Vec::new();
    for (idx, line) in lines.iter().enumerate() {
        if mentions.len() >= MAX_MENTIONS {
            break;
        }
        let trimmed = line.trim_start().trim_start_matches('>').trim_start();
        let lower_head = trimmed.get(..trimmed.len().min(24)).unwrap_or(trimmed).to_ascii_lowercase();
        if SENDER_LINE_PREFIXES.iter().any(|p| lower_head.starts_with(p)) {
            continue;
        }
        for m in find_addresses(line) {
            let key = m.addr.to_ascii_lowercase();
            let local = key.split('@').next().unwrap_or("");
            if matches!(local, "mailer-daemon" | "mailer_daemon") {
                continue;
            }
            let mut score = score_mention(lines, idx, m.start, m.end);
            if ctx.sender_side.contains(&key) {
                score -= 4;
            }
            if ctx.hints.contains(&key) {
                score += 2;
            }
            if local == "postmaster" {
                score -= 1;
            }
            let shape = shape(line, m.start, m.end);
            mentions.push(Mention { line: idx, addr: m.addr, key, score, shape });
        }
    }
    // Best score per address, in order of first mention.
    let mut order: Vec<(String, String, i32)> = Vec::new();
    for m in &mentions {
        match order.iter_mut().find(|(k, _, _)| *k == m.key) {
            Some(entry) => entry.2 = entry.2.max(m.score),
            None => order.push((m.key.clone(), m.addr.clone(), m.score)),
        }
    }
    let mut chosen: Vec<(String, String)> =
        order.iter().filter(|(_, _, s)| *s >= 3).map(|(k, a, _)| (k.clone(), a.clone())).collect();
    if chosen.is_empty() {
        let threshold = if strict { 2 } else { 0 };
        if let Some(best) = order.iter().filter(|(_, _, s)| *s >= threshold).max_by_key(|(_, _, s)| *s) {
            chosen.push((best.0.clone(), best.1.clone()));
        }
    }
    // Addresses written the way a chosen recipient is written belong to the same list of failures.
    let chosen_shapes: HashSet<&(String, String)> =
        mentions.iter().filter(|m| chosen.iter().any(|(k, _)| *k == m.key)).map(|m| &m.shape).collect();
    for (key, addr, score) in &order {
        if *score >= 0
            && !chosen.iter().any(|(k, _)| k == key)
            && mentions.iter().any(|m| &m.key == key && chosen_shapes.contains(&m.shape))
        {
            chosen.push((key.clone(), addr.clone()));
        }
    }
    let first_mention = |key: &str| mentions.iter().position(|m| m.key == key).unwrap_or(usize::MAX);
    chosen.sort_by_key(|(k, _)| first_mention(k));
    chosen.truncate(MAX_RECIPIENTS);
    let chosen_keys: HashSet<&str> = chosen.iter().map(|(k, _)| k.as_str()).collect();
    let global = global_diagnostic(lines);

    let mut out = Vec::with_capacity(chosen.len());
    for (key, addr) in &chosen {
        let own_lines: Vec<usize> = mentions.iter().filter(|m| &m.key == key).map(|m| m.line).collect();
        let other_lines: HashSet<usize> = mentions
            .iter()
            .filter(|m| &m.key != key && chosen_keys.contains(m.key.as_str()))
            .map(|m| m.line)
            .filter(|l| !own_lines.contains(l))
            .collect();
        let mut blocks: Vec<String> = Vec::new();
        let mut last_end = 0;
        for l in reason_lines(lines, own_lines) {
            if l < last_end {
                continue;
            }
            let (text, end) = block(lines, l, &other_lines);
            last_end = end;
            blocks.push(text);
        }
        let best = blocks.iter().find(|b| has_code(b)).or_else(|| blocks.first()).cloned();
        let diagnostic = match best {
            Some(b) if is_informative(&b, addr) => Some(truncate(b)),
            _ => global.clone(),
        };
        let mut r = Recipient { recipient: addr.clone(), ..Recipient::default() };
        fill_codes(&mut r, diagnostic, &blocks, global.as_deref(), true);
        r.remote_mta = r.diagnostic.as_deref().and_then(remote_host).or_else(|| blocks.iter().find_map(|b| remote_host(b)));
        out.push(r);
    }
    out
}

/// The remote host a diagnostic names ("host mx.example.org[192.0.2.1] said", "while talking to
/// mx.example.org.:", "Connected to 192.0.2.1 but", "host mx.example.org [192.0.2.1]: 550"): the first
/// host name (with a dot) or IPv4 address after one of those words.
pub(crate) fn remote_host(text: &str) -> Option<String> {
    const LEAD: &[&str] = &["host ", "talking to ", "connected to ", "connect to ", "remote server ", "mail server "];
    LEAD.iter()
        .filter_map(|lead| find_ci(text, lead).map(|pos| pos + lead.len()))
        .min()
        .and_then(|at| {
            let token = text[at..].split(|c: char| c.is_whitespace() || matches!(c, '[' | '(' | ',' | ';' | '>' | '<')).next()?;
            let host = token.trim_end_matches(['.', ':', ']', ')']).trim_start_matches(['[', '(']);
            let ok = host.contains('.')
                && host.len() > 3
                && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                && host.bytes().any(|b| b.is_ascii_alphabetic() || b == b'.');
            ok.then(|| host.to_ascii_lowercase())
        })
}

/// Sets diagnostic, status, reply code and SMTP command from the chosen diagnostic, falling back to the
/// recipient's other blocks and the bounce's global explanation. Codes found in the text replace those
/// already set only when `text_wins` (the text is the diagnostic the codes should agree with).
pub(crate) fn fill_codes(
    r: &mut Recipient,
    diagnostic: Option<String>,
    blocks: &[String],
    global: Option<&str>,
    text_wins: bool,
) {
    let sources = || diagnostic.iter().map(String::as_str).chain(blocks.iter().map(String::as_str)).chain(global);
    let mut status = None;
    let mut reply = None;
    for s in sources() {
        let (rc, st) = smtp::codes(s);
        if status.is_none() && st.is_some() {
            status = st;
        }
        // The first reply found goes with the first status (both come from the same reply when present).
        reply = reply.or(rc);
        if status.is_some() && reply.is_some() {
            break;
        }
    }
    // The command is read around the reply the recipient's codes come from.
    let anchor = if text_wins { reply.or(r.reply_code) } else { r.reply_code.or(reply) };
    let command = sources().find_map(|s| smtp::smtp_command_for(s, anchor));
    if text_wins {
        r.status = super::dsn::pick_status(r.status.take(), status, r.action.as_deref());
        r.reply_code = reply.or(r.reply_code);
    } else {
        r.status = r.status.take().or(status);
        r.reply_code = r.reply_code.or(reply);
    }
    r.smtp_command = r.smtp_command.take().or(command.map(str::to_string));
    r.diagnostic = r.diagnostic.take().or(diagnostic);
}

/// Longest start of a diagnostic looked for in the report's text by [`command_before`].
const DIAGNOSTIC_KEY: usize = 40;

/// The SMTP command that the reply quoted in `diagnostic` answered, read from the report's text when the
/// diagnostic itself does not say: the text is searched for a paragraph quoting the diagnostic's start (as a
/// transcript does: `... while talking to mx.example.org.:` / `>>> DATA` / `<<< 550 Unknown user`; the
/// quote may be folded over several lines), and the command is the one named last before the quoted reply
/// in that paragraph, else the first named after it (`said: 550 …` / `(in reply to RCPT TO command)`).
/// Paragraphs that quote the diagnostic but name no command ("(reason: 550 …)") are passed over.
pub(crate) fn command_before(text: &BounceText<'_>, diagnostic: &str, reply: Option<u16>) -> Option<&'static str> {
    let diagnostic = collapse_ws(diagnostic);
    let mut end = DIAGNOSTIC_KEY.min(diagnostic.len());
    while !diagnostic.is_char_boundary(end) {
        end -= 1;
    }
    let key = diagnostic[..end].to_ascii_lowercase();
    if key.len() < 8 {
        return None;
    }
    // The key's first word lies within one line wherever the key is quoted: a paragraph without it in any
    // line is passed over without joining it.
    let first_word = key.split(' ').next().unwrap_or(&key);
    let lines = text.before();
    let mut start = 0;
    while start < lines.len() {
        let end = lines[start..].iter().position(|l| l.trim().is_empty()).map_or(lines.len(), |k| start + k);
        if !lines[start..end].iter().any(|l| find_ci(l, first_word).is_some()) {
            start = end + 1;
            continue;
        }
        // The paragraph as one line, so that a quote folded over lines is found.
        let paragraph = collapse_ws(&lines[start..end].join(" "));
        if let Some(pos) = find_ci(&paragraph, &key) {
            let at = pos + reply.and_then(|c| smtp::reply_position(&paragraph[pos..], c)).unwrap_or(0);
            if let Some(command) = smtp::smtp_command_at(&paragraph, Some(at)) {
                return Some(command);
            }
        }
        start = end + 1;
    }
    None
}

/// The diagnostic blocks that mention `addr` in `text`, each ending before a line that mentions one of
/// `others` (used to complete DSN recipients whose fields carry no Diagnostic-Code from the report's
/// human-readable part).
pub(crate) fn blocks_for(text: &BounceText<'_>, addr: &str, others: &[&str]) -> Vec<String> {
    let lines = text.before();
    let key = addr.to_ascii_lowercase();
    let others: Vec<String> =
        others.iter().map(|o| o.to_ascii_lowercase()).filter(|o| *o != key && !key.contains(o.as_str())).collect();
    let mut other_lines: HashSet<usize> = HashSet::new();
    let mut mentions: Vec<usize> = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if find_ci(l, &key).is_some() {
            mentions.push(i);
        } else if others.iter().any(|o| find_ci(l, o).is_some()) {
            other_lines.insert(i);
        }
    }
    let mut out = Vec::new();
    let mut last_end = 0;
    for idx in reason_lines(lines, mentions) {
        if idx < last_end {
            continue;
        }
        let (text, end) = block(lines, idx, &other_lines);
        last_end = end;
        out.push(text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(sender_side: &[&str]) -> Context {
        Context { sender_side: sender_side.iter().map(|s| s.to_string()).collect(), hints: HashSet::new() }
    }

    #[test]
    fn qmail_style_recipient_and_remote_reply() {
        let text = "Hi. This is the qmail-send program at mx.example.jp.\nI'm afraid I wasn't able to deliver \
            your message to the following addresses.\n\n<kijitora@example.org>:\nConnected to 192.0.2.1 but \
            sender was rejected.\nRemote host said: 550 5.7.1 <root@example.jp>... Access denied\n\n\
            --- Below this line is a copy of the message.\n\nReturn-Path: <root@example.jp>\n\
            Received: (qmail 1 invoked by uid 0); 29 Apr 2010 07:55:23 -0000\nMessage-ID: <x@example.jp>\n\
            To: other@example.org\n";
        let r = recipients(&BounceText::new(text), &ctx(&["root@example.jp"]), false);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].recipient, "kijitora@example.org");
        assert_eq!(r[0].status.as_deref(), Some("5.7.1"));
        assert_eq!(r[0].reply_code, Some(550));
        assert_eq!(r[0].smtp_command.as_deref(), Some("MAIL"));
    }

    #[test]
    fn exim_style_two_recipients_each_with_its_own_reason() {
        let text = "This message was created automatically by mail delivery software.\n\n\
            A message that you sent could not be delivered to one or more of its\nrecipients. This is a \
            permanent error. The following address(es) failed:\n\n  a@example.org\n    SMTP error from \
            remote mail server after RCPT TO:<a@example.org>:\n    host mx.example.org [192.0.2.2]: 550 5.1.1 \
            unknown user\n  b@example.net\n    host mx.example.net [192.0.2.3]: 552 5.2.2 mailbox full\n";
        let r = recipients(&BounceText::new(text), &ctx(&[]), false);
        assert_eq!(r.iter().map(|r| r.recipient.as_str()).collect::<Vec<_>>(), ["a@example.org", "b@example.net"]);
        assert_eq!(r[0].status.as_deref(), Some("5.1.1"));
        assert_eq!(r[0].smtp_command.as_deref(), Some("RCPT"));
        assert_eq!(r[1].status.as_deref(), Some("5.2.2"));
        assert_eq!(r[1].reply_code, Some(552));
    }

    #[test]
    fn a_reason_given_on_the_address_line_is_not_followed_by_the_next_paragraph() {
        let text = "This is the MAILER-DAEMON, please DO NOT REPLY to this e-mail.\n\nA message is delayed for \
            more than 10 minutes for the following\nlist of recipients:\n\na@example.org: Network error on \
            destination MXs\n\nPlease note that this is only a temporary failure report.\nThe message is kept \
            in the queue for up to 4 days.\n";
        let r = recipients(&BounceText::new(text), &ctx(&[]), false);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].diagnostic.as_deref(), Some("a@example.org: Network error on destination MXs"));
        // an address line that stops at the address (or a colon) still takes the paragraph after it
        for line in ["     a@example.org", "The following address failed: a@example.org", "a@example.org said:"] {
            let text = format!(
                "Delivery to the following recipient failed permanently:\n\n{line}\n\n\
                 550 5.1.1 The email account that you tried to reach does not exist.\n"
            );
            let r = recipients(&BounceText::new(&text), &ctx(&[]), false);
            assert_eq!(r.iter().map(|r| r.recipient.as_str()).collect::<Vec<_>>(), ["a@example.org"], "{line}");
            assert_eq!(r[0].status.as_deref(), Some("5.1.1"), "{line}");
        }
    }

    #[test]
    fn remote_hosts_named_in_diagnostics() {
        assert_eq!(remote_host("<a@b.example>: host mx.example.org[192.0.2.1] said: 550").as_deref(), Some("mx.example.org"));
        assert_eq!(remote_host("... while talking to MX.Example.ORG.:\n>>> RCPT").as_deref(), Some("mx.example.org"));
        assert_eq!(remote_host("Connected to 192.0.2.225 but sender was rejected.").as_deref(), Some("192.0.2.225"));
        assert_eq!(remote_host("550 5.1.1 user unknown"), None);
        assert_eq!(remote_host("host said: 550"), None);
    }

    #[test]
    fn recipients_listed_alike_are_all_taken() {
        let text = "did not reach the following recipient(s):\n\na@example.org on Thu, 29 Apr 2007 16:51:51 -0500\n\
            \x20   The recipient name is not recognized\nb@example.org on Thu, 29 Apr 2007 16:51:51 -0500\n\
            \x20   The recipient name is not recognized\n";
        let mut c = ctx(&[]);
        c.hints.insert("a@example.org".to_string());
        let r = recipients(&BounceText::new(text), &c, false);
        assert_eq!(r.iter().map(|r| r.recipient.as_str()).collect::<Vec<_>>(), ["a@example.org", "b@example.org"]);
        assert!(r[1].diagnostic.as_deref().is_some_and(|d| d.contains("not recognized")));
    }

    #[test]
    fn a_notice_is_its_opening_paragraphs_and_names_the_address_first_mentioned() {
        let text = "Your post to the list <cats@lists.example.org> was refused: only members may post.\n\n\
            To join, write to\n\n   cats-join@lists.example.org\n\nThe message you sent:\n\n   Subject: hi\n";
        let lines: Vec<&str> = lines(text).collect();
        let (addr, diagnostic) = notice(&lines, &ctx(&[])).expect("a notice");
        assert_eq!(addr, "cats@lists.example.org");
        assert_eq!(
            diagnostic,
            "Your post to the list <cats@lists.example.org> was refused: only members may post. To join, write to \
             cats-join@lists.example.org"
        );
        let (addr, _) = notice(&["Mail from <me@example.com> to <cats@lists.example.org> was held."], &ctx(&["me@example.com"]))
            .expect("a notice");
        assert_eq!(addr, "cats@lists.example.org", "the sender side is passed over");
        assert!(notice(&["No address in this notice."], &ctx(&[])).is_none());
    }

    #[test]
    fn copy_of_the_message_is_not_scanned() {
        let lines = vec!["intro", "Return-Path: <a@b.example>", "Received: by x", "Subject: hi", "", "body"];
        assert_eq!(returned_copy_start(&lines), Some(1));
        let prose = vec!["To: someone", "Subject: hello", "Date: today"];
        assert_eq!(returned_copy_start(&prose), None);
        let indented = vec!["Original mail as follows:", "", "   Return-Path: <a@b.example>", "   Received: by x",
            "   \tfor <c@d.example>; Thu, 29 Apr 2017", "   Subject: hi"];
        assert_eq!(returned_copy_start(&indented), Some(2));
        let mut with_body = indented.clone();
        with_body.extend(["", "   body of the copy"]);
        assert_eq!(returned_copy_start(&with_body), Some(2), "an indented copy's body stays indented");
    }

    #[test]
    fn an_indented_header_excerpt_followed_by_prose_is_not_the_copy() {
        let lines = vec!["The message had these header fields:", "", "  Message-id: <m@a.example>",
            "  Date: today", "  To: b@c.example", "  Subject: hi", "", "It could not be delivered:", "",
            "  Recipient address: b@c.example", "  Reason: host not found"];
        assert_eq!(returned_copy_start(&lines), None);
        let blocks = blocks_for(&BounceText::new(&lines.join("\n")), "b@c.example", &[]);
        assert_eq!(blocks, ["Recipient address: b@c.example Reason: host not found"], "not the quoted To: line");
    }
}
