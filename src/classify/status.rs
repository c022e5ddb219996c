//! The structured-signal classifier: RFC 3463 enhanced status codes and SMTP reply codes mapped onto the
//! taxonomy. It decides only where a code is unambiguous; everything else is `onhold` for the model (or a
//! person) to decide. Kept deliberately small: it is a prior, not a rule list.

use super::{Classification, DecidedBy, HARD_REASONS};
use crate::parse::{Kind, Recipient};

/// Confidence given to a reason implied by a specific enhanced status code (e.g. `5.1.1`).
const ENHANCED_CONFIDENCE: f32 = 0.9;
/// Confidence given to a reason implied by a bare SMTP reply code (e.g. `552`).
const REPLY_CONFIDENCE: f32 = 0.6;
/// Confidence of an `onhold` verdict: the signals did not decide.
const UNDECIDED_CONFIDENCE: f32 = 0.0;

/// RFC 3463 subject.detail → reason, for the codes whose meaning is specific enough to decide alone.
/// Codes that cover many causes (`x.0.0`, `x.7.0`, `x.7.1`, `x.5.0`, ...) are deliberately absent.
fn reason_of_enhanced(subject: u16, detail: u16) -> Option<&'static str> {
    Some(match (subject, detail) {
        (1, 1) | (1, 3) => "userunknown", // bad destination mailbox address / its syntax
        (1, 2) => "hostunknown",          // bad destination system address
        (1, 6) => "hasmoved",             // destination mailbox has moved
        (1, 8) => "rejected",             // bad sender's system address
        (1, 10) => "notaccept",           // recipient address has null MX (RFC 7505)
        (2, 2) => "mailboxfull",          // mailbox full
        (2, 3) | (3, 4) => "emailtoolarge", // message length exceeds limit
        (3, 1) => "systemfull",           // mail system full
        (3, 2) => "notaccept",            // system not accepting network messages
        (4, 4) => "hostunknown",          // unable to route
        (4, 6) => "networkerror",         // routing loop detected
        (4, 7) => "expired",              // delivery time expired
        (6, _) => "contenterror",         // message content or media
        (7, 13) => "suspend",             // user account disabled (RFC 3463 update, RFC 7372)
        (7, 20..=24) | (7, 26) | (7, 29) => "authfailure", // DKIM/SPF/DMARC/ARC failures (RFC 7372, RFC 8617)
        (7, 25) => "requireptr",          // reverse DNS validation failed (RFC 7372)
        (7, 27) => "notaccept",           // sender address has null MX (RFC 7505)
        (7, 3..=8) | (7, 14) => "securityerror", // conversion, crypto, credentials, trust
        (7, 10) | (7, 11) | (7, 30) => "failedstarttls", // encryption needed / required / REQUIRETLS
        _ => return None,
    })
}

/// Bare SMTP reply codes that name a cause on their own (RFC 5321 §4.2.3, RFC 7504).
fn reason_of_reply(code: u16) -> Option<&'static str> {
    Some(match code {
        551 => "hasmoved",             // user not local; please try <forward-path>
        552 => "mailboxfull",          // exceeded storage allocation
        452 => "systemfull",           // insufficient system storage
        521 | 556 => "notaccept",      // host / domain does not accept mail (RFC 7504)
        530 | 535 | 538 => "securityerror", // authentication required / failed
        _ => return None,
    })
}

/// Classify one recipient from its structured signals alone.
pub fn classify(kind: Kind, recipient: &Recipient) -> Classification {
    let decided = |reason: &str, confidence: f32| Classification {
        reason: reason.to_string(),
        hard_bounce: false,
        confidence,
        decided_by: DecidedBy::Status,
    };
    match kind {
        Kind::Arf => return decided("feedback", 1.0),
        Kind::Autoreply => return decided("vacation", 1.0),
        _ => {}
    }
    match recipient.action.as_deref() {
        Some("delivered") | Some("relayed") | Some("expanded") => return decided("delivered", 1.0),
        _ => {}
    }
    let enhanced = recipient.status.as_deref().and_then(parse_enhanced);
    if let Some((class, subject, detail)) = enhanced {
        if class == 2 {
            return decided("delivered", 1.0);
        }
        if let Some(reason) = reason_of_enhanced(subject, detail) {
            return finish(reason, class == 5, ENHANCED_CONFIDENCE);
        }
    }
    if let Some(code) = recipient.reply_code {
        if (200..300).contains(&code) {
            return decided("delivered", 1.0);
        }
        if let Some(reason) = reason_of_reply(code) {
            return finish(reason, code >= 500, REPLY_CONFIDENCE);
        }
    }
    decided("onhold", UNDECIDED_CONFIDENCE)
}

/// A decided reason: hard only for permanent failures of a hard reason.
fn finish(reason: &str, permanent: bool, confidence: f32) -> Classification {
    Classification {
        reason: reason.to_string(),
        hard_bounce: permanent && HARD_REASONS.contains(&reason),
        confidence,
        decided_by: DecidedBy::Status,
    }
}

/// Parse an RFC 3463 `class.subject.detail` code; `None` if it is not one.
pub fn parse_enhanced(status: &str) -> Option<(u8, u16, u16)> {
    let mut parts = status.trim().split('.');
    let class: u8 = parts.next()?.parse().ok()?;
    let subject: u16 = parts.next()?.parse().ok()?;
    let detail: u16 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !matches!(class, 2 | 4 | 5) || subject > 999 || detail > 999 {
        return None;
    }
    Some((class, subject, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpt(status: Option<&str>, reply: Option<u16>, action: Option<&str>) -> Recipient {
        Recipient {
            recipient: "user@example.org".into(),
            status: status.map(str::to_string),
            reply_code: reply,
            action: action.map(str::to_string),
            ..Recipient::default()
        }
    }

    #[test]
    fn specific_enhanced_codes_decide_the_reason() {
        let cases = [
            ("5.1.1", "userunknown", true),
            ("5.1.2", "hostunknown", true),
            ("5.2.2", "mailboxfull", false),
            ("4.2.2", "mailboxfull", false),
            ("5.4.7", "expired", false),
            ("4.4.7", "expired", false),
            ("5.7.26", "authfailure", false),
            ("5.7.25", "requireptr", false),
            ("5.1.10", "notaccept", true),
            ("5.6.0", "contenterror", false),
            ("5.3.4", "emailtoolarge", false),
        ];
        for (status, reason, hard) in cases {
            let c = classify(Kind::Dsn, &rcpt(Some(status), Some(550), Some("failed")));
            assert_eq!((c.reason.as_str(), c.hard_bounce), (reason, hard), "status {status}");
            assert_eq!(c.decided_by, DecidedBy::Status);
            assert!(c.confidence >= ENHANCED_CONFIDENCE);
        }
    }

    #[test]
    fn a_temporary_userunknown_is_not_hard() {
        let c = classify(Kind::Dsn, &rcpt(Some("4.1.1"), None, Some("delayed")));
        assert_eq!(c.reason, "userunknown");
        assert!(!c.hard_bounce);
    }

    #[test]
    fn ambiguous_codes_are_onhold_not_guessed() {
        for status in ["5.0.0", "5.7.1", "5.7.0", "4.7.1", "5.5.0"] {
            let c = classify(Kind::Bounce, &rcpt(Some(status), Some(550), None));
            assert_eq!(c.reason, "onhold", "status {status}");
            assert_eq!(c.confidence, UNDECIDED_CONFIDENCE);
            assert!(!c.hard_bounce);
        }
        let c = classify(Kind::Bounce, &rcpt(None, None, None));
        assert_eq!(c.reason, "onhold");
    }

    #[test]
    fn a_bare_reply_code_decides_only_when_specific() {
        let c = classify(Kind::Bounce, &rcpt(None, Some(552), None));
        assert_eq!((c.reason.as_str(), c.confidence), ("mailboxfull", REPLY_CONFIDENCE));
        let c = classify(Kind::Bounce, &rcpt(None, Some(551), None));
        assert_eq!((c.reason.as_str(), c.hard_bounce), ("hasmoved", true));
        assert_eq!(classify(Kind::Bounce, &rcpt(None, Some(550), None)).reason, "onhold");
        assert_eq!(classify(Kind::Bounce, &rcpt(None, Some(554), None)).reason, "onhold");
    }

    #[test]
    fn enhanced_code_wins_over_reply_code() {
        let c = classify(Kind::Dsn, &rcpt(Some("5.2.2"), Some(550), Some("failed")));
        assert_eq!(c.reason, "mailboxfull");
    }

    #[test]
    fn kinds_and_actions_that_are_not_failures() {
        let c = classify(Kind::Arf, &Recipient::default());
        assert_eq!((c.reason.as_str(), c.confidence), ("feedback", 1.0));
        assert_eq!(classify(Kind::Autoreply, &Recipient::default()).reason, "vacation");
        assert_eq!(classify(Kind::Dsn, &rcpt(Some("2.0.0"), None, Some("delivered"))).reason, "delivered");
        assert_eq!(classify(Kind::Dsn, &rcpt(None, None, Some("relayed"))).reason, "delivered");
    }

    #[test]
    fn malformed_status_codes_are_ignored() {
        for s in ["", "5", "5.1", "5.1.1.1", "9.1.1", "x.y.z", "5.1.99999"] {
            assert_eq!(parse_enhanced(s), None, "{s}");
        }
        assert_eq!(parse_enhanced(" 5.7.26 "), Some((5, 7, 26)));
    }
}
