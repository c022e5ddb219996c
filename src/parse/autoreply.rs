//! RFC 3834 automatic responses: vacation and out-of-office notices. They are recorded with the responder
//! as the recipient and never counted as failures.

use mail_parser::Message;

use super::text::contains_ci;

/// Subject words of automatic replies (lowercase), in the languages the corpus and common responders use.
const SUBJECT_MARKERS: &[&str] = &[
    "auto:", "automatic reply", "auto reply", "auto-reply", "autoreply", "autoresponse", "auto response",
    "autorespons", "auto-response", "out of office", "out of the office", "vacation", "away from",
    "abwesenheit", "absence", "réponse automatique", "reponse automatique", "risposta automatica",
    "respuesta automática", "自動応答", "自動返信", "不在",
];

/// Subject words of delivery failures: such a message is a bounce even if it carries Auto-Submitted.
pub(crate) const BOUNCE_SUBJECT_MARKERS: &[&str] = &[
    "undeliver", "delivery fail", "delivery status", "failure notice", "returned mail", "non-delivery",
    "nondeliver", "non delivery", "could not be delivered", "not delivered", "delivery notification",
    "mail delivery", "delivery problem", "delivery error", "mail system error", "could not send",
    "delivery has failed", "rejected", "bounce", "error sending", "message status", "warning: could not",
    "delivery report", "returned to sender", "unzustellbar", "non remis", "delayed mail", "delivery delayed",
    "mail failure", "permanent error", "failed delivery", "postmaster notify",
];

/// Whether the subject reads like a delivery failure.
pub(crate) fn bounce_subject(subject: &str) -> bool {
    let lower = subject.to_lowercase();
    BOUNCE_SUBJECT_MARKERS.iter().any(|m| lower.contains(m))
}

/// Whether the report's sender is a mail system (MAILER-DAEMON, postmaster, "Mail Delivery System").
pub(crate) fn from_mail_system(message: &Message<'_>) -> bool {
    let Some(addr) = message.from().and_then(|a| a.first()) else {
        return false;
    };
    let address = addr.address.as_deref().unwrap_or("");
    let local = address.split('@').next().unwrap_or("").to_ascii_lowercase();
    let name = addr.name.as_deref().unwrap_or("");
    matches!(local.as_str(), "mailer-daemon" | "postmaster" | "mail-daemon" | "mailer_daemon" | "mdaemon")
        || contains_ci(name, "mail delivery")
        || contains_ci(name, "mailer-daemon")
        || contains_ci(name, "postmaster")
        || contains_ci(name, "mail administrator")
}

/// Whether the message declares itself an automatic reply (RFC 3834 §5 Auto-Submitted: auto-replied, the
/// common X-Autoreply/X-Autorespond headers, Precedence: auto_reply) or its subject says so.
pub(crate) fn is_autoreply(message: &Message<'_>) -> bool {
    let header = |name: &'static str| message.header_raw(name).map(str::trim);
    if header("Auto-Submitted").is_some_and(|v| contains_ci(v, "auto-replied")) {
        return true;
    }
    if header("X-Autoreply").is_some() || header("X-Autorespond").is_some() || header("X-Autoresponder").is_some() {
        return true;
    }
    if header("Precedence").is_some_and(|v| contains_ci(v, "auto_reply")) {
        return true;
    }
    let subject = message.subject().unwrap_or("").to_lowercase();
    SUBJECT_MARKERS.iter().any(|m| subject.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounce_subjects_are_told_from_auto_replies() {
        assert!(bounce_subject("Undelivered Mail Returned to Sender"));
        assert!(bounce_subject("DELIVERY FAILURE: User x not listed"));
        assert!(!bounce_subject("Automatic reply: Nyaan"));
        assert!(!bounce_subject("Out of Office: Project plan"));
    }

    #[test]
    fn auto_reply_headers_and_subjects() {
        fn parse(raw: &str) -> Message<'_> {
            mail_parser::MessageParser::default().parse(raw.as_bytes()).expect("headers")
        }
        assert!(is_autoreply(&parse("From: a@b.example\nAuto-Submitted: auto-replied\n\nx")));
        assert!(is_autoreply(&parse("From: a@b.example\nSubject: Automatic reply: hi\n\nx")));
        assert!(!is_autoreply(&parse("From: a@b.example\nAuto-Submitted: no\nSubject: hi\n\nx")));
        assert!(from_mail_system(&parse("From: Mail Delivery System <MAILER-DAEMON@mx.example>\n\nx")));
        assert!(!from_mail_system(&parse("From: Colleague <c@example.org>\n\nx")));
    }
}
