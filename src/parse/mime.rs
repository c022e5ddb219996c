//! The MIME layer: runs mail-parser once and sorts the parts of the report by what they carry
//! (delivery-status, feedback-report, the human-readable text, the returned message or its headers).
//! Only the report's own parts are walked; the attached original is read for its headers alone, so the
//! walk has no recursion whatever the nesting of the input.

use std::borrow::Cow;

use mail_parser::{Address, Message, MessageParser, MimeHeaders, PartType};

use super::OriginalMessage;
use super::text::html_to_text;

/// Upper bound of human-readable text kept per message: bounce explanations are short, and scanning the
/// whole of a huge attachment-like text part would only cost time.
const MAX_TEXT: usize = 256 * 1024;

/// What the report's MIME structure holds, sorted by role.
#[derive(Debug, Default)]
pub(crate) struct Walk<'a> {
    /// `report-type` parameter of a top-level multipart/report, lowercase.
    pub report_type: Option<String>,
    /// Bodies of message/delivery-status (and message/global-delivery-status) parts.
    pub delivery_status: Vec<Cow<'a, str>>,
    /// Body of the message/feedback-report part.
    pub feedback: Option<Cow<'a, str>>,
    /// Human-readable text of the report (text/plain parts, or text/html rendered as text when there is no
    /// plain text), in order, without the attached original.
    pub texts: Vec<Cow<'a, str>>,
    /// Text of the attached original (message/rfc822 raw or text/rfc822-headers), for free-text fallbacks.
    pub original_raw: Option<Cow<'a, str>>,
    /// Headers of the returned message, when attached.
    pub original: Option<OriginalMessage>,
    /// Recipients (To and Cc) of the returned message, lowercased, for free-text scoring.
    pub original_recipients: Vec<String>,
    /// Sender addresses of the returned message (From, Sender, Return-Path), lowercased.
    pub original_senders: Vec<String>,
}

/// The first address of an address header, if any.
pub(crate) fn first_address(addr: Option<&Address<'_>>) -> Option<String> {
    addr.and_then(|a| a.first()).and_then(|a| a.address.as_deref()).map(str::to_string)
}

fn all_addresses(addr: Option<&Address<'_>>, out: &mut Vec<String>) {
    if let Some(a) = addr {
        for one in a.iter() {
            if let Some(x) = one.address.as_deref() {
                out.push(x.to_ascii_lowercase());
            }
        }
    }
}

fn content_type_of(part: &mail_parser::MessagePart<'_>) -> (String, String) {
    match part.content_type() {
        Some(ct) => (ct.ctype().to_ascii_lowercase(), ct.subtype().unwrap_or("").to_ascii_lowercase()),
        None => ("text".to_string(), "plain".to_string()),
    }
}

fn body_text<'a>(part: &'a mail_parser::MessagePart<'a>) -> Cow<'a, str> {
    match &part.body {
        PartType::Text(t) | PartType::Html(t) => Cow::Borrowed(t.as_ref()),
        PartType::Binary(b) | PartType::InlineBinary(b) => String::from_utf8_lossy(b),
        PartType::Message(m) => String::from_utf8_lossy(m.raw_message()),
        PartType::Multipart(_) => Cow::Borrowed(""),
    }
}

fn cap(text: Cow<'_, str>) -> Cow<'_, str> {
    if text.len() <= MAX_TEXT {
        return text;
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    match text {
        Cow::Borrowed(s) => Cow::Borrowed(&s[..end]),
        Cow::Owned(mut s) => {
            s.truncate(end);
            Cow::Owned(s)
        }
    }
}

/// Reads the Message-ID, From, To and Subject of a returned message (or a header block), its recipients
/// (To, Cc, then the `for` clauses of its Received fields) and its sender addresses (From, Sender,
/// Return-Path). Returns `false` when the block has none of the four headers.
pub(crate) fn read_original(m: &Message<'_>, walk: &mut Walk<'_>) -> bool {
    let original = OriginalMessage {
        message_id: m.message_id().map(str::to_string),
        from: first_address(m.from()),
        to: first_address(m.to()),
        subject: m.subject().map(str::to_string),
    };
    if original == OriginalMessage::default() {
        return false;
    }
    let mut recipients = Vec::new();
    all_addresses(m.to(), &mut recipients);
    all_addresses(m.cc(), &mut recipients);
    for received in m.received_all() {
        if let Some(addr) = received.for_.as_deref().and_then(super::text::clean_address) {
            recipients.push(addr.to_ascii_lowercase());
        }
    }
    let mut senders = Vec::new();
    all_addresses(m.from(), &mut senders);
    all_addresses(m.sender(), &mut senders);
    if let Some(rp) = m.return_address() {
        senders.push(rp.to_ascii_lowercase());
    }
    walk.original = Some(original);
    walk.original_recipients = recipients;
    walk.original_senders = senders;
    true
}

fn original_from_header_text(text: &str, walk: &mut Walk<'_>) {
    if let Some(m) = MessageParser::default().parse_headers(text.as_bytes()) {
        read_original(&m, walk);
    }
}

/// Sorts the parts of `message` (the report itself) by role.
pub(crate) fn walk<'a>(message: &'a Message<'a>) -> Walk<'a> {
    let mut walk = Walk::default();
    if let Some(ct) = message.content_type()
        && ct.ctype().eq_ignore_ascii_case("multipart")
        && ct.subtype().is_some_and(|s| s.eq_ignore_ascii_case("report"))
    {
        walk.report_type = ct.attribute("report-type").map(|r| r.trim().to_ascii_lowercase());
    }
    let mut html: Vec<Cow<'a, str>> = Vec::new();
    let mut text_len = 0usize;
    for part in &message.parts {
        let (ctype, subtype) = content_type_of(part);
        match (ctype.as_str(), subtype.as_str(), &part.body) {
            (_, _, PartType::Multipart(_)) => {}
            ("message", "delivery-status" | "global-delivery-status", _)
            | ("text", "delivery-status", _) => walk.delivery_status.push(body_text(part)),
            ("message", "feedback-report", _) | ("text", "feedback-report", _) => {
                if walk.feedback.is_none() {
                    walk.feedback = Some(body_text(part));
                }
            }
            (_, _, PartType::Message(m)) => {
                if walk.original.is_none() {
                    read_original(m, &mut walk);
                    walk.original_raw = Some(cap(String::from_utf8_lossy(m.raw_message())));
                }
            }
            ("message", "rfc822" | "global", _) | ("text" | "message", "rfc822-headers" | "global-headers", _) => {
                if walk.original.is_none() {
                    let text = body_text(part);
                    original_from_header_text(&text, &mut walk);
                    walk.original_raw = Some(cap(text));
                }
            }
            (_, _, PartType::Text(t)) if text_len < MAX_TEXT => {
                text_len += t.len();
                walk.texts.push(cap(Cow::Borrowed(t.as_ref())));
            }
            (_, _, PartType::Html(t)) if text_len < MAX_TEXT => {
                html.push(Cow::Owned(html_to_text(&cap(Cow::Borrowed(t.as_ref())))));
            }
            _ => {}
        }
    }
    if walk.texts.iter().all(|t| t.trim().is_empty()) {
        walk.texts.extend(html);
    }
    walk
}
