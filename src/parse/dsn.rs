//! RFC 3464 delivery status notifications: the per-message fields (§2.2) and one [`Recipient`] per
//! per-recipient block (§2.3). Reply code, enhanced status and the failed SMTP command are completed from
//! the diagnostic text when the fields lack them.

use super::Recipient;
use super::fields::{Block, blocks, get, split_typed};
use super::smtp;
use super::text::{clean_address, contains_ci, lines};

/// Per-message fields (RFC 3464 §2.2) copied onto every recipient.
#[derive(Debug, Default, Clone)]
struct PerMessage {
    reporting_mta: Option<String>,
    arrival_date: Option<String>,
}

fn typed_text(value: Option<&str>) -> Option<String> {
    value.map(|v| split_typed(v).1.to_string()).filter(|v| !v.is_empty())
}

/// Whether a block is a per-recipient block (it names a recipient).
fn is_recipient_block(block: &Block) -> bool {
    get(block, "Final-Recipient").is_some() || get(block, "Original-Recipient").is_some()
}

/// Whether a text part carries RFC 3464 fields (some MTAs put them in text/plain instead of a
/// message/delivery-status part).
pub(crate) fn looks_like_dsn_fields(text: &str) -> bool {
    contains_ci(text, "final-recipient:") && (contains_ci(text, "status:") || contains_ci(text, "action:"))
}

/// RFC 3464 field names (§2.2, §2.3) and the `X-` fields MTAs add to them, lowercase.
const DSN_FIELDS: &[&str] = &[
    "reporting-mta", "dsn-gateway", "received-from-mta", "arrival-date", "original-envelope-id", "final-recipient",
    "original-recipient", "x-actual-recipient", "action", "status", "remote-mta", "diagnostic-code",
    "last-attempt-date", "final-log-id", "will-retry-until", "x-postfix-queue-id", "x-postfix-sender",
];

/// `text` with its blocks of RFC 3464 fields blanked out (each line replaced by an empty one, so line numbers
/// stay), for reading the prose around fields pasted into a text part: a block of fields says nothing a
/// reader would call the reason, and its `Status: 4.4.7` would pass for a reply. A block is a paragraph whose
/// first line is a DSN field.
pub(crate) fn without_fields(text: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut in_fields = false;
    let mut paragraph_start = true;
    for line in lines(text) {
        if line.trim().is_empty() {
            in_fields = false;
            paragraph_start = true;
            out.push("");
            continue;
        }
        if paragraph_start {
            in_fields = line.split_once(':').is_some_and(|(name, _)| DSN_FIELDS.iter().any(|f| name.eq_ignore_ascii_case(f)));
            paragraph_start = false;
        }
        out.push(if in_fields { "" } else { line });
    }
    out.join("\n")
}

/// Parses the bodies of the delivery-status parts into recipients (in order), each with its Status field's
/// comment when its block has no Diagnostic-Code to carry it (`Status: 4.0.0 (cat.example.net: host name
/// lookup failure)`): the diagnostic of last resort, for a recipient that the report's text says nothing of
/// either.
pub(crate) fn recipients_and_comments(parts: &[impl AsRef<str>]) -> Vec<(Recipient, Option<String>)> {
    let mut out = Vec::new();
    for part in parts {
        let mut per_message = PerMessage::default();
        for block in blocks(part.as_ref()) {
            if !is_recipient_block(&block) {
                if get(&block, "Reporting-MTA").is_some() || get(&block, "Arrival-Date").is_some() {
                    per_message = PerMessage {
                        reporting_mta: typed_text(get(&block, "Reporting-MTA")),
                        arrival_date: get(&block, "Arrival-Date").map(str::to_string),
                    };
                }
                continue;
            }
            out.extend(recipient(&block, &per_message));
        }
    }
    out
}

/// The recipient of one field block, with its Status comment when no Diagnostic-Code carries it (see
/// [`recipients_and_comments`]).
fn recipient(block: &Block, pm: &PerMessage) -> Option<(Recipient, Option<String>)> {
    let final_rcpt = get(block, "Final-Recipient").and_then(clean_address);
    let original_rcpt = get(block, "Original-Recipient").and_then(clean_address);
    let recipient = final_rcpt.clone().or_else(|| original_rcpt.clone())?;
    let (diagnostic_type, diagnostic) = match get(block, "Diagnostic-Code") {
        Some(v) => {
            let (t, text) = split_typed(v);
            let text = t.as_deref().and_then(|t| exit_status_text(t, text)).unwrap_or_else(|| text.to_string());
            (t, Some(text).filter(|s| !s.is_empty()))
        }
        None => (None, None),
    };
    let status_value = get(block, "Status");
    let status_field = status_value.and_then(smtp::enhanced_status);
    let comment = status_value.and_then(status_comment);
    let (reply_code, diag_status) = diagnostic.as_deref().map(smtp::codes).unwrap_or_default();
    let unused_comment = comment.filter(|_| diagnostic.is_none()).map(str::to_string);
    let diagnostic = diagnostic.map(|d| with_status_comment(d, comment));
    let action = get(block, "Action").map(|a| a.split_whitespace().next().unwrap_or(a).to_ascii_lowercase());
    let status = pick_status(status_field, diag_status, action.as_deref());
    let smtp_command = diagnostic.as_deref().and_then(smtp::smtp_command).map(str::to_string);
    let r = Recipient {
        recipient,
        original_recipient: original_rcpt.filter(|_| final_rcpt.is_some()),
        action,
        status,
        reply_code,
        diagnostic_type,
        diagnostic,
        smtp_command,
        remote_mta: typed_text(get(block, "Remote-MTA")),
        // Per-message fields written without the blank line before the recipient's block.
        reporting_mta: typed_text(get(block, "Reporting-MTA")).or_else(|| pm.reporting_mta.clone()),
        arrival_date: get(block, "Arrival-Date").map(str::to_string).or_else(|| pm.arrival_date.clone()),
        last_attempt_date: get(block, "Last-Attempt-Date").map(str::to_string),
    };
    Some((r, unused_comment))
}

/// `diagnostic` followed by the Status field's `comment` ([`status_comment`]) in parentheses when it has words
/// the diagnostic does not already hold: the reporting MTA's own reading of the code, which can say more than
/// the remote reply (a "User Unknown" for a disabled mailbox).
fn with_status_comment(diagnostic: String, comment: Option<&str>) -> String {
    match comment {
        Some(c) if crate::parse::text::find_ci(&diagnostic, &c.to_ascii_lowercase()).is_none() => {
            format!("{diagnostic} ({c})")
        }
        _ => diagnostic,
    }
}

/// The comment of a Status field value (`5.2.1 (mailbox disabled, not accepting messages)`) when it has
/// words.
fn status_comment(status: &str) -> Option<&str> {
    let (_, rest) = status.split_once('(')?;
    let comment = rest.trim_end().trim_end_matches(')').trim();
    (comment.chars().filter(|ch| ch.is_alphabetic()).count() >= 3).then_some(comment)
}

/// The exit codes of sysexits.h (64..=78) that a local delivery program returns, with their names and meanings.
const SYSEXITS: &[(&str, &str)] = &[
    ("EX_USAGE", "command line usage error"),
    ("EX_DATAERR", "data format error"),
    ("EX_NOINPUT", "cannot open input"),
    ("EX_NOUSER", "addressee unknown"),
    ("EX_NOHOST", "host name unknown"),
    ("EX_UNAVAILABLE", "service unavailable"),
    ("EX_SOFTWARE", "internal software error"),
    ("EX_OSERR", "operating system error"),
    ("EX_OSFILE", "critical operating system file missing"),
    ("EX_CANTCREAT", "cannot create output file"),
    ("EX_IOERR", "input/output error"),
    ("EX_TEMPFAIL", "temporary failure, try again later"),
    ("EX_PROTOCOL", "remote error in protocol"),
    ("EX_NOPERM", "permission denied"),
    ("EX_CONFIG", "configuration error"),
];

/// What a bare exit status means (`Diagnostic-Code: X-Unix; 71`, Sendmail's report of a local mailer such as a
/// pipe to a program): the number alone says nothing to a reader or to the classifier, so it is written out,
/// with its sysexits.h name and meaning when it has one. `None` for other types and for texts that are not a
/// bare number.
fn exit_status_text(diagnostic_type: &str, text: &str) -> Option<String> {
    if diagnostic_type != "x-unix" {
        return None;
    }
    let code: u16 = text.trim().parse().ok()?;
    let known = code.checked_sub(64).and_then(|i| SYSEXITS.get(usize::from(i)));
    Some(match known {
        Some((name, meaning)) => format!("mailer program exited with status {code} ({name}: {meaning})"),
        None => format!("mailer program exited with status {code}"),
    })
}

/// The remote server's own enhanced status, quoted in the diagnostic, wins over the Status field: the
/// field is often the reporting MTA's summary (`5.0.0`, `4.4.7` for an expired message, a guess such as
/// `5.1.1` for every 550), while the diagnostic carries the reason the remote end gave. When the two differ
/// in class, the one that agrees with the Action (failed: 5, delayed: 4, delivered/relayed/expanded: 2)
/// stands; without an Action to decide, the field does.
pub(crate) fn pick_status(field: Option<String>, diagnostic: Option<String>, action: Option<&str>) -> Option<String> {
    let class = |s: &String| s.as_bytes().first().copied();
    match (field, diagnostic) {
        (Some(f), Some(d)) if class(&f) != class(&d) => {
            let expected = match action {
                Some("failed") => Some(b'5'),
                Some("delayed") => Some(b'4'),
                Some("delivered" | "relayed" | "expanded") => Some(b'2'),
                _ => None,
            };
            if expected.is_some() && class(&d) == expected { Some(d) } else { Some(f) }
        }
        (f, d) => d.or(f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipients(parts: &[&str]) -> Vec<Recipient> {
        recipients_and_comments(parts).into_iter().map(|(r, _)| r).collect()
    }

    const DS: &str = "Reporting-MTA: dns; mx.example.jp\nArrival-Date: Thu, 29 Apr 2010 23:34:45 +0900\n\n\
        Final-Recipient: RFC822; Kijitora@Example.ORG\nOriginal-Recipient: rfc822; cat@example.org\n\
        Action: failed\nStatus: 5.0.0\nRemote-MTA: DNS; mx.example.org\n\
        Diagnostic-Code: SMTP; 550 5.1.1 <kijitora@example.org>... User\n unknown (in reply to RCPT TO command)\n\
        Last-Attempt-Date: Thu, 29 Apr 2010 23:34:46 +0900\n";

    #[test]
    fn every_per_recipient_field_is_read() {
        let r = recipients(&[DS]);
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!(r.recipient, "Kijitora@example.org");
        assert_eq!(r.original_recipient.as_deref(), Some("cat@example.org"));
        assert_eq!(r.action.as_deref(), Some("failed"));
        assert_eq!(r.status.as_deref(), Some("5.1.1"));
        assert_eq!(r.reply_code, Some(550));
        assert_eq!(r.diagnostic_type.as_deref(), Some("smtp"));
        assert_eq!(
            r.diagnostic.as_deref(),
            Some("550 5.1.1 <kijitora@example.org>... User unknown (in reply to RCPT TO command)")
        );
        assert_eq!(r.smtp_command.as_deref(), Some("RCPT"));
        assert_eq!(r.remote_mta.as_deref(), Some("mx.example.org"));
        assert_eq!(r.reporting_mta.as_deref(), Some("mx.example.jp"));
        assert_eq!(r.arrival_date.as_deref(), Some("Thu, 29 Apr 2010 23:34:45 +0900"));
        assert_eq!(r.last_attempt_date.as_deref(), Some("Thu, 29 Apr 2010 23:34:46 +0900"));
    }

    #[test]
    fn a_bare_exit_status_of_a_local_mailer_is_written_out() {
        let block = "Final-Recipient: rfc822; a@example.org\nAction: delayed\nStatus: 4.5.0\nDiagnostic-Code: X-Unix; 71\n";
        let r = &recipients(&[block])[0];
        assert_eq!(r.diagnostic_type.as_deref(), Some("x-unix"));
        assert_eq!(r.diagnostic.as_deref(), Some("mailer program exited with status 71 (EX_OSERR: operating system error)"));
        assert_eq!(r.status.as_deref(), Some("4.5.0"));
        assert_eq!(exit_status_text("x-unix", "127").as_deref(), Some("mailer program exited with status 127"));
        assert_eq!(exit_status_text("x-unix", "procmail: Lock failure"), None);
        assert_eq!(exit_status_text("smtp", "550"), None);
    }

    #[test]
    fn pasted_field_blocks_are_blanked_and_prose_kept() {
        let text = "Transcript:\n554 no such mailer\n\nReporting-MTA: dns; a.example\n\nFinal-Recipient: rfc822; b@c.example\n\
            Status: 5.5.0\n\nStatus: not a field block? it is one\nThe end.\n";
        let blanked = without_fields(text);
        assert_eq!(blanked.lines().filter(|l| !l.is_empty()).collect::<Vec<_>>(), ["Transcript:", "554 no such mailer"]);
        assert_eq!(blanked.split('\n').count(), text.lines().count(), "line numbers stay");
        assert_eq!(without_fields("Note: fields below\nStatus: 5.0.0"), "Note: fields below\nStatus: 5.0.0");
    }

    #[test]
    fn the_status_comment_follows_the_diagnostic_unless_it_says_nothing_new() {
        let block = "Final-Recipient: rfc822; a@example.org\nAction: failed\n\
            Status: 5.2.1 (mailbox disabled, not accepting messages)\n\
            Diagnostic-Code: smtp; 550 5.2.1 <a@example.org>... User Unknown\n";
        let r = recipients(&[block]).remove(0);
        let expected = "550 5.2.1 <a@example.org>... User Unknown (mailbox disabled, not accepting messages)";
        assert_eq!(r.diagnostic.as_deref(), Some(expected));
        assert_eq!(r.status.as_deref(), Some("5.2.1"));
        let said = "550 Host not found";
        assert_eq!(with_status_comment(said.into(), status_comment("5.4.4 (host not found)")), said);
        assert_eq!(with_status_comment("550 nope".into(), status_comment("5.0.0 (5.0.0)")), "550 nope");
        assert_eq!(with_status_comment("550 nope".into(), status_comment("5.0.0")), "550 nope");
        assert_eq!(with_status_comment("550 nope".into(), None), "550 nope");
        let bare = "Final-Recipient: rfc822; b@example.net\nAction: delayed\n\
            Status: 4.0.0 (example.net: host name lookup failure)\n";
        let (r, comment) = recipients_and_comments(&[bare]).remove(0);
        assert_eq!(r.diagnostic, None);
        assert_eq!(comment.as_deref(), Some("example.net: host name lookup failure"));
        assert_eq!(recipients_and_comments(&[block]).remove(0).1, None, "a Diagnostic-Code carries the comment itself");
    }

    #[test]
    fn the_remote_status_in_the_diagnostic_wins() {
        assert_eq!(pick_status(Some("4.4.7".into()), Some("4.2.2".into()), Some("failed")).as_deref(), Some("4.2.2"));
        assert_eq!(pick_status(Some("5.0.0".into()), None, Some("failed")).as_deref(), Some("5.0.0"));
        assert_eq!(pick_status(None, Some("4.4.1".into()), None).as_deref(), Some("4.4.1"));
    }

    #[test]
    fn across_classes_the_status_agreeing_with_the_action_stands() {
        assert_eq!(pick_status(Some("4.5.0".into()), Some("5.5.0".into()), Some("failed")).as_deref(), Some("5.5.0"));
        assert_eq!(pick_status(Some("4.4.1".into()), Some("5.1.1".into()), Some("delayed")).as_deref(), Some("4.4.1"));
        assert_eq!(pick_status(Some("4.4.1".into()), Some("5.1.1".into()), None).as_deref(), Some("4.4.1"));
    }
}
