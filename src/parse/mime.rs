//! The MIME layer: runs mail-parser once and sorts the parts of the report by what they carry
//! (delivery-status, feedback-report, the human-readable text, the returned message or its headers).
//! Only the report's own parts are walked; the attached original is read for its headers alone, so the
//! walk has no recursion whatever the nesting of the input.

use std::borrow::Cow;

use mail_parser::{Address, HeaderName, Message, MimeHeaders, PartType};

use super::OriginalMessage;
use super::text::html_to_text;

/// Upper bound of human-readable text kept per message: bounce explanations are short, and scanning the
/// whole of a huge attachment-like text part would only cost time.
const MAX_TEXT: usize = 256 * 1024;

/// What the report's MIME structure holds, sorted by role.
#[derive(Debug, Default)]
pub(crate) struct Walk<'a> {
    /// Whether the message is a multipart/report (RFC 6522), whatever its report-type.
    pub is_report: bool,
    /// `report-type` parameter of a top-level multipart/report, lowercase.
    pub report_type: Option<String>,
    /// Bodies of message/delivery-status (and message/global-delivery-status) parts.
    pub delivery_status: Vec<Cow<'a, str>>,
    /// Body of the message/feedback-report part.
    pub feedback: Option<Cow<'a, str>>,
    /// Human-readable text of the report (text/plain parts, or text/html rendered as text when there is no
    /// plain text), in order, without the attached original.
    pub texts: Vec<Cow<'a, str>>,
    /// Raw bytes of the attached original (message/rfc822 or text/rfc822-headers part body), if any.
    pub original_raw: Option<&'a [u8]>,
    /// Headers of the returned message, when attached.
    pub original: Option<OriginalMessage>,
    /// Recipients (To and Cc) of the returned message, lowercased, for free-text scoring.
    pub original_recipients: Vec<String>,
    /// Sender addresses of the returned message (From, Sender, Return-Path), lowercased.
    pub original_senders: Vec<String>,
}

/// The subtype an attached message's part is renamed to before the MIME parse (see [`hide_nested_messages`]);
/// as long as `rfc822` and `global`, so the rename is done in place.
const OPAQUE_SUBTYPE: &str = "x-rbnd";

/// Renames `message/rfc822` and `message/global` in the Content-Type fields of `data` to
/// `message/x-rbnd` (same length, in place; copies `data` only when there is one).
///
/// mail-parser parses an attached message in full, decoding every part of its body (quoted-printable,
/// base64, charsets), which was a good part of the parse time; we read only the attached message's headers
/// (`original_from_header_text`) and its raw bytes. Under the new name the part stays one opaque body, read
/// as before. The rename reaches only field lines that start with `Content-Type:`; the raw message stored
/// is never this copy.
pub(crate) fn hide_nested_messages(data: &mut Cow<'_, [u8]>) {
    const FIELD: &[u8] = b"content-type:";
    let bytes: &[u8] = data;
    // Each `message/rfc822` (or `global`) starts 7 bytes before a slash; the field name stands before it,
    // at the start of a line, with only whitespace (folding included) between the colon and the value.
    let names_nested = |slash: usize| {
        let Some(ctype) = slash.checked_sub(7).and_then(|start| bytes.get(start..slash + 7)) else { return false };
        let subtype = &ctype[8..];
        if !ctype[..7].eq_ignore_ascii_case(b"message")
            || !(subtype.eq_ignore_ascii_case(b"rfc822") || subtype.eq_ignore_ascii_case(b"global"))
            || bytes.get(slash + 7).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'-')
        {
            return false;
        }
        let value = slash - 7;
        let colon_end = value - bytes[..value].iter().rev().take_while(|b| b.is_ascii_whitespace()).count();
        colon_end.checked_sub(FIELD.len()).is_some_and(|field| {
            bytes[field..colon_end].eq_ignore_ascii_case(FIELD) && (field == 0 || bytes[field - 1] == b'\n')
        })
    };
    let subtypes: Vec<usize> = memchr::memchr_iter(b'/', bytes).filter(|&s| names_nested(s)).map(|s| s + 1).collect();
    if !subtypes.is_empty() {
        let owned = data.to_mut();
        for i in subtypes {
            owned[i..i + OPAQUE_SUBTYPE.len()].copy_from_slice(OPAQUE_SUBTYPE.as_bytes());
        }
    }
}

/// Drops a parsed message without recursion. A message nested in a message is a `PartType::Message` inside a
/// part, and the default drop recurses once per level: tens of thousands of nested message/rfc822 parts (a
/// few megabytes of input) would overflow the stack, which aborts the process instead of panicking.
pub(crate) fn dispose(message: Message<'_>) {
    let mut pending = vec![message];
    while let Some(mut m) = pending.pop() {
        for part in &mut m.parts {
            if let PartType::Message(inner) = std::mem::take(&mut part.body) {
                pending.push(inner);
            }
        }
    }
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

/// What the returned message tells about itself.
#[derive(Debug)]
pub(crate) struct Original {
    /// Its Message-ID, From, To and Subject.
    pub headers: OriginalMessage,
    /// Its recipients (To, Cc, then the `for` clauses of its Received fields), lowercased.
    pub recipients: Vec<String>,
    /// Its sender addresses (From, Sender, Return-Path), lowercased.
    pub senders: Vec<String>,
}

/// Reads a returned message (or a header block). `None` when it has no Message-ID, From, To or Subject.
pub(crate) fn read_original(m: &Message<'_>) -> Option<Original> {
    let headers = OriginalMessage {
        message_id: m.message_id().map(str::to_string),
        from: first_address(m.from()),
        to: first_address(m.to()),
        subject: m.subject().map(str::to_string),
    };
    if headers == OriginalMessage::default() {
        return None;
    }
    let mut recipients = Vec::new();
    all_addresses(m.to(), &mut recipients);
    all_addresses(m.cc(), &mut recipients);
    // The `for <addr>` clause of a Received field names the envelope recipient. Our parser keeps no value
    // for Received fields (see `detect::parser`: most are the report's own, never read), so each is sliced
    // from the raw message, trimmed as mail-parser trims a raw value.
    for h in m.headers().iter().filter(|h| h.name == HeaderName::Received) {
        if let Some(raw) = m.raw_message.get(h.offset_start as usize..h.offset_end as usize) {
            let value = String::from_utf8_lossy(raw);
            if let Some(addr) = received_for(value.trim_matches([' ', '\t', '\r', '\n'])) {
                recipients.push(addr);
            }
        }
    }
    let mut senders = Vec::new();
    all_addresses(m.from(), &mut senders);
    all_addresses(m.sender(), &mut senders);
    if let Some(rp) = m.return_address() {
        senders.push(rp.to_ascii_lowercase());
    }
    Some(Original { headers, recipients, senders })
}

impl Walk<'_> {
    /// Records what the returned message tells about itself.
    pub(crate) fn set_original(&mut self, o: Original) {
        self.original = Some(o.headers);
        self.original_recipients = o.recipients;
        self.original_senders = o.senders;
    }
}

/// The address of the `for` clause of a Received field (RFC 5321 §4.4), lowercased.
fn received_for(value: &str) -> Option<String> {
    let b = value.as_bytes();
    let mut from = 0;
    while let Some(rel) = super::text::find_ci(&value[from..], "for") {
        let at = from + rel;
        from = at + 3;
        let spaced = |i: Option<&u8>| i.is_some_and(u8::is_ascii_whitespace);
        if at == 0 || !spaced(b.get(at - 1)) || !spaced(b.get(at + 3)) {
            continue;
        }
        let rest = value[at + 3..].trim_start();
        let end = rest.find([';', ' ', '\t', '\r', '\n']).unwrap_or(rest.len());
        return super::text::clean_address(&rest[..end]).filter(|a| a.contains('@')).map(|a| a.to_ascii_lowercase());
    }
    None
}

fn original_from_header_text(bytes: &[u8], walk: &mut Walk<'_>) {
    if let Some(o) = super::detect::parser().parse_headers(bytes).as_ref().and_then(read_original) {
        walk.set_original(o);
    }
}

/// The raw body of `part` within `message`.
fn part_bytes<'a>(message: &'a Message<'a>, part: &mail_parser::MessagePart<'_>) -> Option<&'a [u8]> {
    message.raw_message.get(part.offset_body as usize..part.offset_end as usize)
}

/// Sorts the parts of `message` (the report itself) by role.
pub(crate) fn walk<'a>(message: &'a Message<'a>) -> Walk<'a> {
    let mut walk = Walk::default();
    if let Some(ct) = message.content_type()
        && ct.ctype().eq_ignore_ascii_case("multipart")
        && ct.subtype().is_some_and(|s| s.eq_ignore_ascii_case("report"))
    {
        walk.is_report = true;
        walk.report_type = ct.attribute("report-type").map(|r| r.trim().to_ascii_lowercase());
    }
    let mut html: Vec<&'a str> = Vec::new();
    let mut text_len = 0usize;
    for part in &message.parts {
        let (ctype, subtype) = content_type_of(part);
        match (ctype.as_str(), subtype.as_str(), &part.body) {
            (_, _, PartType::Multipart(_)) => {}
            ("message", "delivery-status" | "global-delivery-status", _)
            | ("text", "delivery-status", _) => walk.delivery_status.push(body_text(part)),
            ("message", "feedback-report", _) | ("text", "feedback-report", _)
                if walk.feedback.is_none() => {
                    walk.feedback = Some(body_text(part));
                }
            (_, _, PartType::Message(m))
                if walk.original_raw.is_none() => {
                    if let Some(o) = read_original(m) {
                        walk.set_original(o);
                    }
                    walk.original_raw = part_bytes(message, part).or(Some(&[]));
                }
            ("message", "rfc822" | "global" | OPAQUE_SUBTYPE, _)
            | ("text" | "message", "rfc822-headers" | "global-headers", _)
                if walk.original_raw.is_none() => {
                    let bytes = match &part.body {
                        PartType::Text(t) | PartType::Html(t) => t.as_bytes(),
                        PartType::Binary(b) | PartType::InlineBinary(b) => b.as_ref(),
                        _ => &[],
                    };
                    original_from_header_text(bytes, &mut walk);
                    walk.original_raw = Some(bytes);
                }
            (_, _, PartType::Text(t)) if text_len < MAX_TEXT => {
                text_len += t.len();
                walk.texts.push(cap(Cow::Borrowed(t.as_ref())));
            }
            (_, _, PartType::Html(t)) if text_len < MAX_TEXT => html.push(t.as_ref()),
            _ => {}
        }
    }
    if walk.texts.iter().all(|t| t.trim().is_empty()) {
        walk.texts.extend(html.into_iter().map(|h| Cow::Owned(html_to_text(&cap(Cow::Borrowed(h))))));
    }
    walk
}

#[cfg(test)]
mod tests {
    #[test]
    fn attached_messages_are_renamed_in_content_type_fields_only() {
        let raw = "Content-Type: multipart/report\r\n\r\n--b\r\nContent-Type:\r\n Message/RFC822\r\n\r\n\
                   Content-Type: message/global; x=1\r\n\r\nsee message/rfc822 and X-Content-Type: message/rfc822\r\n\
                   Content-Type: message/rfc822-headers\r\n";
        let mut data = std::borrow::Cow::Borrowed(raw.as_bytes());
        super::hide_nested_messages(&mut data);
        let expected = raw.replacen("Message/RFC822", "Message/x-rbnd", 1).replacen("message/global", "message/x-rbnd", 1);
        assert_eq!(String::from_utf8_lossy(&data), expected);
        let mut plain = std::borrow::Cow::Borrowed(&b"Subject: message/rfc822\n\nbody"[..]);
        super::hide_nested_messages(&mut plain);
        assert!(matches!(plain, std::borrow::Cow::Borrowed(_)), "nothing to rename, nothing copied");
    }

    #[test]
    fn received_for_clause() {
        let v = "from a by b with esmtp id x\n\tfor <Kiji@Example.ORG>; Fri, 01 Oct 2010 19:15:19 +0900";
        assert_eq!(super::received_for(v).as_deref(), Some("kiji@example.org"));
        assert_eq!(super::received_for("from forum.example by b; date").as_deref(), None);
    }

    #[test]
    fn received_for_clauses_are_read_from_the_raw_fields_of_a_returned_message() {
        let headers = "Received: from a by b\r\n\tfor <Kiji@Example.ORG>; Fri, 01 Oct 2010 19:15:19 +0900\r\n\
                       Received: from c by d; Fri, 01 Oct 2010 19:15:18 +0900\r\n\
                       Received: from e by f for <two@example.net>;\r\n date\r\n\
                       To: <to@example.com>\r\nSubject: hi\r\n\r\nbody";
        let parsed = crate::parse::detect::parser().parse_headers(headers.as_bytes()).expect("headers");
        let original = super::read_original(&parsed).expect("a returned message");
        assert_eq!(original.recipients, ["to@example.com", "kiji@example.org", "two@example.net"]);
    }
}
