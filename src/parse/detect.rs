//! Decides what a message is and hands it to the right reader: ARF feedback report, RFC 3464 DSN, Amazon
//! SES notification, RFC 3834 auto-reply, free-text bounce, or `unparsed` with the reason.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::OnceLock;

use mail_parser::{HeaderName, Message, MessageParser};

use super::fields::blocks;
use super::freetext::{self, BounceText, Context};
use super::mime::{self, Walk, first_address};
use super::text::{clean_address, collapse_ws, contains_ci};
use super::{FeedbackReport, Kind, Parsed, Recipient, arf, autoreply, dsn, ses};

/// Longest diagnostic kept for reports that are not bounces (ARF summary, auto-reply text).
const MAX_SUMMARY: usize = 500;

/// The MIME parser: structured parsing for the headers we read (MIME, addresses, ids, subject), and no value
/// for any other field: those are read only through `Message::header_raw` (or, for the Received fields of a
/// returned message, `mime::read_original`), which slice the raw message at the field's offsets (kept for
/// ignored fields too), so copying each value into a string would be wasted work.
pub(crate) fn parser() -> &'static MessageParser {
    static PARSER: OnceLock<MessageParser> = OnceLock::new();
    PARSER.get_or_init(|| {
        MessageParser::new()
            .default_header_ignore()
            .with_mime_headers()
            .header_text(HeaderName::Subject)
            .header_address(HeaderName::From)
            .header_address(HeaderName::Sender)
            .header_address(HeaderName::To)
            .header_address(HeaderName::Cc)
            .header_id(HeaderName::MessageId)
            .header_id(HeaderName::ReturnPath)
    })
}

/// Whether the input looks like binary data rather than a mail message: many control bytes at its start.
fn is_binary(raw: &[u8]) -> bool {
    /// 1 for control bytes that do not occur in mail text (NUL, other C0 controls but TAB, LF, FF, CR, ESC
    /// as used by ISO-2022-JP; DEL).
    const CONTROL: [u8; 256] = {
        let mut t = [0u8; 256];
        let mut b = 0;
        while b < 0x20 {
            t[b] = !matches!(b as u8, b'\t' | b'\n' | b'\r' | 0x0c | 0x1b) as u8;
            b += 1;
        }
        t[0x7f] = 1;
        t
    };
    let sample = &raw[..raw.len().min(2048)];
    let controls: usize = sample.iter().map(|&b| usize::from(CONTROL[usize::from(b)])).sum();
    controls * 10 > sample.len()
}

/// Files written with bare CR line ends (old Mac) become LF so the MIME parser sees lines; a bare CR is one
/// not followed by LF, and the conversion happens when they outnumber LFs. Other input is used as is.
fn normalise_line_ends(raw: &[u8]) -> Cow<'_, [u8]> {
    let lf = memchr::memchr_iter(b'\n', raw).count();
    let bare_cr = memchr::memchr_iter(b'\r', raw).filter(|&i| raw.get(i + 1) != Some(&b'\n')).count();
    if bare_cr <= lf {
        return Cow::Borrowed(raw);
    }
    let mut out = raw.to_vec();
    for i in 0..out.len() {
        if out[i] == b'\r' && out.get(i + 1) != Some(&b'\n') {
            out[i] = b'\n';
        }
    }
    Cow::Owned(out)
}

/// The first paragraph of `text` that explains (not a salutation such as "Hello,", see
/// [`freetext::is_explanation`]; else the first paragraph), whitespace collapsed, at most `MAX_SUMMARY` bytes.
fn summary(text: &str) -> Option<String> {
    let lines: Vec<&str> = super::text::lines(text).collect();
    let paragraphs = freetext::paragraphs(&lines);
    let &(first, end) =
        paragraphs.iter().find(|(s, e)| freetext::is_explanation(&lines[*s..*e])).or(paragraphs.first())?;
    let mut s = collapse_ws(&lines[first..end].join(" "));
    if s.len() > MAX_SUMMARY {
        let mut end = MAX_SUMMARY;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    Some(s).filter(|s| !s.is_empty())
}

/// Parses one raw message. Never panics on any input (the caller adds a last-resort guard).
pub(crate) fn parse(raw: &[u8]) -> Parsed {
    parse_at(raw, 0)
}

/// Parses a message; `depth` counts how many attached messages were entered to get here (at most one: a
/// report forwarded as an attachment).
fn parse_at(raw: &[u8], depth: u8) -> Parsed {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Parsed::unparsed("empty message");
    }
    if is_binary(raw) {
        return Parsed::unparsed("binary data, not a mail message");
    }
    let mut data = normalise_line_ends(raw);
    mime::hide_nested_messages(&mut data);
    let Some(message) = parser().parse(data.as_ref()) else {
        return Parsed::unparsed("no message headers found");
    };
    let parsed = if message.headers().is_empty() {
        Parsed::unparsed("no message headers found")
    } else {
        read(&message, &data, depth)
    };
    mime::dispose(message);
    parsed
}

/// Reads a parsed message (see [`parse_at`]).
fn read(message: &Message<'_>, data: &[u8], depth: u8) -> Parsed {
    let mut parsed = Parsed {
        kind: Kind::Unparsed,
        message_id: message.message_id().map(str::to_string),
        from: first_address(message.from()),
        subject: message.subject().map(str::to_string),
        date: message.header_raw("Date").map(|d| d.trim().to_string()),
        original: None,
        recipients: Vec::new(),
        feedback: None,
        parse_error: None,
    };
    let mut walk = mime::walk(message);
    let joined: Cow<'_, str> = match walk.texts.as_slice() {
        [one] => Cow::Borrowed(one.as_ref()),
        many => Cow::Owned(many.iter().map(|t| t.as_ref()).collect::<Vec<&str>>().join("\n")),
    };
    let text = BounceText::new(&joined);
    if walk.original.is_none()
        && let Some(copy) = text.copy()
        && let Some(o) = parser().parse_headers(copy.as_bytes()).as_ref().and_then(mime::read_original)
    {
        walk.original = Some(o.headers);
        walk.original_recipients = o.recipients;
        walk.original_senders = o.senders;
    }
    parsed.original = walk.original.clone();

    if let Some(report) = feedback_report(message, data, &walk) {
        parsed.kind = Kind::Arf;
        parsed.recipients = arf_recipients(&report, &walk, message);
        parsed.feedback = Some(report);
        return parsed;
    }

    if !walk.delivery_status.is_empty() {
        let recipients = dsn_recipients(&walk.delivery_status, &text);
        if !recipients.is_empty() {
            parsed.kind = Kind::Dsn;
            parsed.recipients = recipients;
            return parsed;
        }
        parsed.parse_error = Some("delivery-status part without recipient fields; read the text instead".into());
    }

    if contains_ci(&joined, "\"notificationtype\"")
        && let Some(recipients) = ses::recipients(&joined)
    {
        parsed.kind = Kind::Bounce;
        parsed.recipients = recipients;
        return parsed;
    }

    let bounce_markers = autoreply::from_mail_system(message)
        || parsed.subject.as_deref().is_some_and(autoreply::bounce_subject)
        || walk.report_type.as_deref() == Some("delivery-status");

    // A multipart/report is a machine report (an unknown kind if we got here), not a human's auto-reply.
    if !bounce_markers && !walk.is_report && autoreply::is_autoreply(message) {
        parsed.kind = Kind::Autoreply;
        let responder = parsed.from.clone().or_else(|| message.return_address().map(str::to_string));
        if let Some(addr) = responder.as_deref().and_then(clean_address) {
            parsed.recipients.push(Recipient { recipient: addr, diagnostic: summary(&joined), ..Recipient::default() });
        }
        return parsed;
    }

    if dsn::looks_like_dsn_fields(&joined) {
        let prose = dsn::without_fields(&joined);
        let recipients = dsn_recipients(&[joined.as_ref()], &BounceText::new(&prose));
        if !recipients.is_empty() {
            parsed.kind = Kind::Bounce;
            parsed.recipients = recipients;
            return parsed;
        }
    }

    let ctx = context(message, &walk);
    if is_list_notice(message, &walk)
        && let Some((addr, diagnostic)) = freetext::notice(text.before(), &ctx)
    {
        let mut r = Recipient { recipient: addr, ..Recipient::default() };
        freetext::fill_codes(&mut r, Some(diagnostic), &[], None, true);
        parsed.kind = Kind::Bounce;
        parsed.recipients.push(r);
        return parsed;
    }
    let mut recipients = freetext::recipients(&text, &ctx, !bounce_markers);
    if recipients.is_empty() && bounce_markers {
        // A bounce that names nobody in its text: the returned message's recipients are the failed ones.
        if let Some(to) = walk.original_recipients.first() {
            let mut r = Recipient { recipient: to.clone(), ..Recipient::default() };
            freetext::fill_codes(&mut r, freetext::global_diagnostic(text.before()), &[], None, true);
            recipients.push(r);
        }
    }
    // The reporting MTA of a free-text bounce: the host its mail system writes from (MAILER-DAEMON@host).
    if autoreply::from_mail_system(message)
        && let Some(host) = parsed.from.as_deref().and_then(|f| f.rsplit_once('@')).map(|(_, h)| h.to_ascii_lowercase())
    {
        for r in recipients.iter_mut().filter(|r| r.reporting_mta.is_none()) {
            r.reporting_mta = Some(host.clone());
        }
    }
    let has_codes = recipients.iter().any(|r| r.status.is_some() || r.reply_code.is_some());
    if !has_codes
        && depth == 0
        && let Some(inner) = walk.original_raw.filter(|b| memchr::memmem::find(b, b"delivery-status").is_some())
    {
        // A report forwarded as an attachment (a wrapper saying little, the DSN inside).
        let nested = parse_at(inner, depth + 1);
        if nested.kind == Kind::Dsn {
            return Parsed { parse_error: Some("the report was read from the attached message".into()), ..nested };
        }
    }
    if !recipients.is_empty() && (bounce_markers || has_codes) {
        parsed.kind = Kind::Bounce;
        parsed.recipients = recipients;
        return parsed;
    }
    parsed.parse_error = Some("no delivery status, feedback report, auto-reply or bounce text found".into());
    parsed
}

/// Header fields that list servers add: RFC 2369 `List-*`, RFC 2919 `List-Id`, and those of ezmlm, fml and
/// Mailman.
const LIST_HEADERS: &[&str] =
    &["List-Id", "List-Post", "List-Help", "List-Subscribe", "Mailing-List", "X-MLServer", "X-ML-Name", "X-Mailman-Version"];

/// Local-part suffixes of a list's administrative address (`cats-admin@`, `cats-request@`); `owner-` is the
/// one prefix.
const LIST_ADMIN_SUFFIXES: &[&str] = &["-admin", "-owner", "-request", "-bounces"];

/// Whether the message is a mailing-list manager's notice about a post it did not distribute ("you are not a
/// member", "duplicated Message-ID", "message too large"): sent from the list's administrative address with
/// a list server's header field, in reply to the post (References, In-Reply-To) or quoting it. A list's
/// ordinary posts come from their authors, so they are not taken for notices.
fn is_list_notice(message: &Message<'_>, walk: &Walk<'_>) -> bool {
    let Some(from) = first_address(message.from()) else { return false };
    let local = from.split('@').next().unwrap_or("").to_ascii_lowercase();
    let admin = local.starts_with("owner-") || LIST_ADMIN_SUFFIXES.iter().any(|s| local.ends_with(s));
    let about_a_post = message.header_raw("References").is_some()
        || message.header_raw("In-Reply-To").is_some()
        || walk.original.is_some();
    admin && about_a_post && LIST_HEADERS.iter().any(|h| message.header_raw(*h).is_some())
}

/// Subject words of a complaint sent without ARF fields.
const COMPLAINT_SUBJECTS: &[&str] = &["complaint", "abuse report", "spam report"];

/// The ARF report, from a message/feedback-report part, a text part holding the fields, or a bare feedback
/// block sent as the message itself (its header block holds the fields). A complaint sent without ARF
/// fields (Microsoft's JMRP and others: nothing but the complained-about message attached, a subject saying
/// complaint or abuse report) is an `abuse` report with no fields.
fn feedback_report(message: &Message<'_>, data: &[u8], walk: &Walk<'_>) -> Option<FeedbackReport> {
    let has_original = walk.original_raw.is_some();
    if let Some(text) = &walk.feedback {
        return arf::parse_fields(text, has_original);
    }
    if message.header_raw("Feedback-Type").is_some() {
        let text = String::from_utf8_lossy(data);
        let header_block = blocks(&text).into_iter().next()?;
        return arf::report_from(header_block, has_original);
    }
    // A feedback block sent as text/plain (some reporters label the part wrongly, or forward it).
    if let Some(text) = walk.texts.iter().find(|t| arf::looks_like_feedback(t)) {
        return arf::parse_fields(text, has_original);
    }
    let complaint = message.subject().is_some_and(|s| {
        let s = s.to_lowercase();
        COMPLAINT_SUBJECTS.iter().any(|w| s.contains(w))
    });
    let only_the_original = has_original && walk.delivery_status.is_empty() && walk.texts.iter().all(|t| t.trim().is_empty());
    (complaint && only_the_original)
        .then(|| FeedbackReport { feedback_type: "abuse".to_string(), has_original, ..FeedbackReport::default() })
}

/// The recipients an ARF report is about: one per distinct Original-Rcpt-To (a complaint about a message sent to
/// several of the reporter's users names each, and each can be suppressed), else one: the returned message's
/// first recipient (To, Cc, Received `for`), else the reported domain, else the report's own To. All share the
/// report's summary, reporting MTA and arrival date.
fn arf_recipients(report: &FeedbackReport, walk: &Walk<'_>, message: &Message<'_>) -> Vec<Recipient> {
    let mut addresses: Vec<String> = Vec::new();
    for address in report.original_rcpt_to.iter().filter_map(|r| clean_address(r)) {
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    if addresses.is_empty() {
        let fallback = walk
            .original_recipients
            .iter()
            .find(|a| a.contains('@'))
            .cloned()
            .or_else(|| report.reported_domains.first().cloned())
            .or_else(|| first_address(message.to()).filter(|a| a.contains('@')))
            .unwrap_or_default();
        addresses.push(fallback);
    }
    let diagnostic = walk
        .texts
        .first()
        .and_then(|t| summary(t))
        .or_else(|| message.subject().map(collapse_ws).filter(|s| !s.is_empty()))
        .or_else(|| Some(report.feedback_type.clone()));
    let reporting_mta = report.reporting_mta.as_deref().map(|m| super::fields::split_typed(m).1.to_string());
    addresses
        .into_iter()
        .map(|recipient| Recipient {
            recipient,
            diagnostic: diagnostic.clone(),
            reporting_mta: reporting_mta.clone(),
            arrival_date: report.arrival_date.clone(),
            ..Recipient::default()
        })
        .collect()
}

/// Addresses that are probably not the failed recipient (the report's addressee, the original sender) and
/// addresses to favour (the returned message's recipients) when reading free text.
fn context(message: &Message<'_>, walk: &Walk<'_>) -> Context {
    let mut sender_side: HashSet<String> = walk.original_senders.iter().cloned().collect();
    for a in message.to().into_iter().chain(message.from()).flat_map(|a| a.iter()) {
        sender_side.extend(a.address.as_deref().map(str::to_ascii_lowercase));
    }
    let hints: HashSet<String> = walk.original_recipients.iter().filter(|r| !sender_side.contains(*r)).cloned().collect();
    Context { sender_side, hints }
}

/// The recipients of RFC 3464 field blocks, completed from the report's text (see [`complete_from_text`]); a
/// recipient that neither its block nor the text explains takes its Status field's comment as diagnostic.
fn dsn_recipients(parts: &[impl AsRef<str>], text: &BounceText<'_>) -> Vec<Recipient> {
    let (mut recipients, comments): (Vec<Recipient>, Vec<Option<String>>) =
        dsn::recipients_and_comments(parts).into_iter().unzip();
    if recipients.is_empty() {
        return recipients;
    }
    complete_from_text(&mut recipients, text);
    for (r, comment) in recipients.iter_mut().zip(comments) {
        if r.diagnostic.is_none() {
            r.diagnostic = comment;
        }
    }
    recipients
}

/// Completes DSN recipients whose fields lack a diagnostic or codes from the report's human-readable text:
/// the text's block about the recipient, unless it says no more than the address; then, in a report about
/// one recipient, the report's own explanation (see [`freetext::global_diagnostic`]).
fn complete_from_text(recipients: &mut [Recipient], text: &BounceText<'_>) {
    if text.before().is_empty() {
        return;
    }
    let single = recipients.len() == 1;
    let addresses: Vec<String> = recipients.iter().map(|r| r.recipient.clone()).collect();
    let others: Vec<&str> = addresses.iter().map(String::as_str).collect();
    for r in recipients.iter_mut() {
        let needs = r.diagnostic.is_none() || (r.reply_code.is_none() && r.status.is_none()) || r.smtp_command.is_none();
        if !needs {
            continue;
        }
        let blocks = freetext::blocks_for(text, &r.recipient, &others);
        let from_text = r.diagnostic.is_none();
        let diagnostic = if from_text {
            blocks
                .iter()
                .find(|b| smtp_code_in(b))
                .or_else(|| blocks.first())
                .filter(|b| freetext::is_informative(b, &r.recipient))
                .cloned()
                .or_else(|| single.then(|| freetext::global_diagnostic(text.before())).flatten())
        } else {
            None
        };
        freetext::fill_codes(r, diagnostic, &blocks, None, from_text);
        if r.smtp_command.is_none()
            && let Some(diagnostic) = r.diagnostic.as_deref()
        {
            r.smtp_command = freetext::command_before(text, diagnostic, r.reply_code).map(str::to_string);
        }
    }
}

fn smtp_code_in(text: &str) -> bool {
    super::smtp::reply_code(text).is_some() || super::smtp::enhanced_status(text).is_some()
}
