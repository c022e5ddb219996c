//! Raw message → [`Parsed`]: RFC 3464 DSNs, free-text bounces, ARF feedback reports (RFC 5965 / RFC 6591),
//! RFC 3834 auto-replies, and everything else as `unparsed`. Pure: no I/O, never panics on any input.
//!
//! How a message is read (`detect`): mail-parser splits the MIME structure once (`mime`); then, in order,
//! a feedback-report part or bare ARF block (`arf`; a complaint sent with nothing but the complained-about
//! message attached counts as an `abuse` report without fields), a delivery-status part (`dsn`, completed
//! from the human-readable part), an Amazon SES JSON notification (`ses`), an auto-reply (`autoreply`),
//! RFC 3464 fields pasted into text, a mailing-list manager's notice about a post it refused (the list is
//! the recipient, the opening paragraphs the diagnostic), and finally the free text (`freetext`), where
//! recipients and diagnostics are found by where addresses stand relative to SMTP replies (`smtp`), not by
//! per-MTA patterns. A report forwarded as an attachment is read from the attachment. CR-only input is turned
//! into LF first; CRLF and LF are read as they are.

use serde::Serialize;

mod arf;
mod autoreply;
mod detect;
mod dsn;
mod fields;
mod freetext;
mod mime;
mod ses;
pub(crate) mod smtp;
mod text;

/// What kind of message this is; stored in `messages.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// multipart/report; report-type=delivery-status (RFC 3464).
    Dsn,
    /// A non-delivery report in free text (no delivery-status part).
    Bounce,
    /// multipart/report; report-type=feedback-report (RFC 5965), or a bare ARF field block.
    Arf,
    /// An automatic reply (RFC 3834 Auto-Submitted, vacation notices).
    Autoreply,
    /// Anything else, or anything that failed to parse: kept raw with the reason.
    Unparsed,
}

impl Kind {
    /// The lowercase name used in the database and in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Dsn => "dsn",
            Kind::Bounce => "bounce",
            Kind::Arf => "arf",
            Kind::Autoreply => "autoreply",
            Kind::Unparsed => "unparsed",
        }
    }
}

/// Headers of the original (returned) message, when the report carries it or its headers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OriginalMessage {
    /// Message-ID of the returned message, without angle brackets.
    pub message_id: Option<String>,
    /// First From address of the returned message.
    pub from: Option<String>,
    /// First To address of the returned message.
    pub to: Option<String>,
    /// Subject of the returned message, decoded.
    pub subject: Option<String>,
}

/// One recipient the report is about, with its per-recipient fields (RFC 3464 §2.3) or what a free-text
/// bounce says of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Recipient {
    /// Final-Recipient address (without the `rfc822;` type), lowercase domain.
    pub recipient: String,
    /// Original-Recipient address, if given.
    pub original_recipient: Option<String>,
    /// DSN Action, lowercase: failed, delayed, delivered, relayed, expanded.
    pub action: Option<String>,
    /// RFC 3463 enhanced status code, e.g. `5.1.1`.
    pub status: Option<String>,
    /// SMTP reply code, e.g. 550.
    pub reply_code: Option<u16>,
    /// Diagnostic-Code type (usually `smtp`).
    pub diagnostic_type: Option<String>,
    /// The diagnostic text, unfolded, whitespace collapsed.
    pub diagnostic: Option<String>,
    /// Which SMTP command failed, if known: CONN, HELO, MAIL, RCPT, DATA.
    pub smtp_command: Option<String>,
    /// Remote-MTA (without the `dns;` type).
    pub remote_mta: Option<String>,
    /// Reporting-MTA (per-message field, copied here per recipient).
    pub reporting_mta: Option<String>,
    /// Arrival-Date as written.
    pub arrival_date: Option<String>,
    /// Last-Attempt-Date as written.
    pub last_attempt_date: Option<String>,
}

/// An ARF feedback report (RFC 5965), including RFC 6591 authentication failure fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FeedbackReport {
    /// Feedback-Type, lowercase (abuse, fraud, virus, other, not-spam, auth-failure, or an unregistered one).
    pub feedback_type: String,
    /// Version as written (`1`, `1.0`, `0.1` all occur).
    pub version: Option<String>,
    /// User-Agent of the reporter.
    pub user_agent: Option<String>,
    /// Auth-Failure (RFC 6591 §3.1), lowercase: adsp, bodyhash, revoked, signature, spf, dmarc.
    pub auth_failure: Option<String>,
    /// Source-IP, the address alone (a trailing comment such as the host name is dropped; see `fields`).
    pub source_ip: Option<String>,
    /// Source-Port.
    pub source_port: Option<u16>,
    /// Every Reported-Domain.
    pub reported_domains: Vec<String>,
    /// Every Reported-URI.
    pub reported_uris: Vec<String>,
    /// Original-Mail-From as written.
    pub original_mail_from: Option<String>,
    /// Every Original-Rcpt-To as written.
    pub original_rcpt_to: Vec<String>,
    /// Original-Envelope-Id.
    pub original_envelope_id: Option<String>,
    /// Arrival-Date (or the draft's Received-Date) as written.
    pub arrival_date: Option<String>,
    /// Reporting-MTA as written (with its `dns;` type).
    pub reporting_mta: Option<String>,
    /// Delivery-Result (RFC 6591): delivered, spam, policy, reject, other.
    pub delivery_result: Option<String>,
    /// Identity-Alignment (RFC 7489 failure reports): none, spf, dkim, or a list.
    pub identity_alignment: Option<String>,
    /// Incidents: how many times this was seen.
    pub incidents: Option<u32>,
    /// Every Authentication-Results field of the report.
    pub authentication_results: Vec<String>,
    /// DKIM-Domain.
    pub dkim_domain: Option<String>,
    /// DKIM-Identity.
    pub dkim_identity: Option<String>,
    /// DKIM-Selector.
    pub dkim_selector: Option<String>,
    /// DKIM-Canonicalized-Header (base64).
    pub dkim_canonicalized_header: Option<String>,
    /// DKIM-Canonicalized-Body (base64).
    pub dkim_canonicalized_body: Option<String>,
    /// DKIM-Selector-DNS.
    pub dkim_selector_dns: Option<String>,
    /// Every SPF-DNS field.
    pub spf_dns: Vec<String>,
    /// Every field of the feedback part in order, names as written.
    pub fields: Vec<(String, String)>,
    /// Whether the original message or its headers are attached.
    pub has_original: bool,
}

/// A parsed message: what it is, the recipients it reports on, and its context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Parsed {
    /// What the message is.
    pub kind: Kind,
    /// Message-ID of the report itself.
    pub message_id: Option<String>,
    /// From of the report itself.
    pub from: Option<String>,
    /// Subject of the report itself.
    pub subject: Option<String>,
    /// Date header of the report itself, as written.
    pub date: Option<String>,
    /// The returned message's headers, if attached.
    pub original: Option<OriginalMessage>,
    /// One entry per recipient (DSN, bounce); one for an ARF report (the reported recipient or domain) and
    /// one for an auto-reply (its sender).
    pub recipients: Vec<Recipient>,
    /// The feedback report, for `Kind::Arf`.
    pub feedback: Option<FeedbackReport>,
    /// Why the message is `unparsed` (or what was wrong but survivable).
    pub parse_error: Option<String>,
}

impl Parsed {
    /// A message kept as `unparsed` with the reason (also used by ingest, e.g. for over-limit messages).
    pub fn unparsed(reason: impl Into<String>) -> Parsed {
        Parsed {
            kind: Kind::Unparsed,
            message_id: None,
            from: None,
            subject: None,
            date: None,
            original: None,
            recipients: Vec::new(),
            feedback: None,
            parse_error: Some(reason.into()),
        }
    }
}

/// Parses one raw message (any line ending, any size, any bytes) into [`Parsed`]. Never panics: anything
/// that cannot be read becomes [`Kind::Unparsed`] with the reason in `parse_error`.
pub fn parse(raw: &[u8]) -> Parsed {
    // Last-resort guard around third-party MIME code and ours: a bug must cost one message its fields,
    // never the ingest process. The input is only borrowed, so no state can be left half-updated.
    std::panic::catch_unwind(|| detect::parse(raw))
        .unwrap_or_else(|_| Parsed::unparsed("internal error while parsing this message (a bug in rebound)"))
}
