//! Raw message → [`Parsed`]: RFC 3464 DSNs, free-text bounces, ARF feedback reports (RFC 5965 / RFC 6591),
//! RFC 3834 auto-replies, and everything else as `unparsed`. Pure: no I/O, never panics on any input.

use serde::Serialize;

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
    pub message_id: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
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
    pub feedback_type: String,
    pub version: Option<String>,
    pub user_agent: Option<String>,
    pub auth_failure: Option<String>,
    pub source_ip: Option<String>,
    pub source_port: Option<u16>,
    pub reported_domains: Vec<String>,
    pub reported_uris: Vec<String>,
    pub original_mail_from: Option<String>,
    pub original_rcpt_to: Vec<String>,
    pub original_envelope_id: Option<String>,
    pub arrival_date: Option<String>,
    pub reporting_mta: Option<String>,
    pub delivery_result: Option<String>,
    pub identity_alignment: Option<String>,
    pub incidents: Option<u32>,
    pub authentication_results: Vec<String>,
    pub dkim_domain: Option<String>,
    pub dkim_identity: Option<String>,
    pub dkim_selector: Option<String>,
    pub dkim_canonicalized_header: Option<String>,
    pub dkim_canonicalized_body: Option<String>,
    pub dkim_selector_dns: Option<String>,
    pub spf_dns: Vec<String>,
    /// Every field of the feedback part in order, names as written.
    pub fields: Vec<(String, String)>,
    /// Whether the original message or its headers are attached.
    pub has_original: bool,
}

/// A parsed message: what it is, the recipients it reports on, and its context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Parsed {
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
