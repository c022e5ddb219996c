//! Recipient diagnostics → [`Classification`]: a reason from the taxonomy of design.md, hard/soft,
//! a confidence and what decided it. Pure: no I/O.

use serde::Serialize;

/// Which signal decided a classification; stored in `bounces.decided_by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DecidedBy {
    /// The neural classifier.
    Model,
    /// Structured signals: enhanced status code, reply code, DSN action, message kind.
    Status,
    /// A label a user confirmed.
    User,
}

impl DecidedBy {
    /// The lowercase name used in the database and in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            DecidedBy::Model => "model",
            DecidedBy::Status => "status",
            DecidedBy::User => "user",
        }
    }
}

/// The verdict on one recipient.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classification {
    /// A reason of the taxonomy (or a user's custom category).
    pub reason: String,
    /// Will never succeed as is.
    pub hard_bounce: bool,
    /// 0..1.
    pub confidence: f32,
    pub decided_by: DecidedBy,
}

pub mod status;

/// The default taxonomy of design.md (the reason names of Sisimai 5, December 2025).
pub const REASONS: &[&str] = &[
    "authfailure", "badreputation", "blocked", "contenterror", "delivered", "emailtoolarge", "expired",
    "failedstarttls", "feedback", "filtered", "hasmoved", "hostunknown", "mailboxfull", "mailererror",
    "networkerror", "norelaying", "notaccept", "notcompliantrfc", "onhold", "policyviolation", "ratelimited",
    "rejected", "requireptr", "securityerror", "spamdetected", "suppressed", "suspend", "syntaxerror",
    "systemerror", "systemfull", "undefined", "userunknown", "vacation", "virusdetected",
];

/// Reasons that make a permanent failure a hard bounce: retrying the same address will never succeed.
/// Matches Sisimai's hard-bounce set so results compare across tools.
pub const HARD_REASONS: &[&str] = &["userunknown", "hostunknown", "hasmoved", "notaccept"];

/// Classify every recipient of a parsed message, in order.
pub fn classify_all(parsed: &crate::parse::Parsed) -> Vec<Classification> {
    parsed.recipients.iter().map(|r| status::classify(parsed.kind, r)).collect()
}
