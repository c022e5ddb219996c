//! ARF feedback reports (RFC 5965 §3.1) including authentication failure reports (RFC 6591 §3.1).
//!
//! Our own field parser rather than mail-auth 0.13.3's `Feedback::parse_rfc5322`: that one rejects real
//! reports this service must keep (a bare feedback part without MIME wrapper, `Version: 0.1`/`1.0`,
//! an unregistered Feedback-Type such as `opt-out`) and keeps one Original-Rcpt-To where several occur.
//! Every field is kept in order in [`FeedbackReport::fields`]; the registered ones are also typed.

use super::FeedbackReport;
use super::fields::{Field, blocks};
use super::text::contains_ci;

/// Whether `text` starts (after blank lines) with an ARF field block: its first field is Feedback-Type or
/// it has a Feedback-Type field together with User-Agent or Version.
pub(crate) fn looks_like_feedback(text: &str) -> bool {
    let head = text.trim_start();
    let mut cut = head.len().min(4096);
    while !head.is_char_boundary(cut) {
        cut -= 1;
    }
    let head = &head[..cut];
    let first_is = head.len() >= 14 && head.as_bytes()[..14].eq_ignore_ascii_case(b"feedback-type:");
    first_is
        || (contains_ci(head, "\nfeedback-type:") || contains_ci(head, "\rfeedback-type:"))
            && (contains_ci(head, "\nuser-agent:") || contains_ci(head, "\nversion:"))
}

/// Builds the report from the feedback part's text. `None` when it has no Feedback-Type.
pub(crate) fn parse_fields(text: &str, has_original: bool) -> Option<FeedbackReport> {
    let fields: Vec<Field> = blocks(text).into_iter().flatten().collect();
    report_from(fields, has_original)
}

/// Builds the report from already split fields (e.g. the header block of a bare feedback part).
pub(crate) fn report_from(fields: Vec<Field<'_>>, has_original: bool) -> Option<FeedbackReport> {
    let mut r = FeedbackReport { has_original, ..FeedbackReport::default() };
    let mut saw_type = false;
    for f in &fields {
        let v = f.value.trim();
        // Single fields are kept as written, even empty (`Original-Mail-From:` with nothing is a null sender);
        // repeated fields only add non-empty values.
        let one = || Some(v.to_string());
        let many = || Some(v.to_string()).filter(|s| !s.is_empty());
        match f.name.to_ascii_lowercase().as_str() {
            "feedback-type" => {
                saw_type = true;
                r.feedback_type = v.to_ascii_lowercase();
            }
            "version" => r.version = one(),
            "user-agent" => r.user_agent = one(),
            "auth-failure" => r.auth_failure = Some(v.to_ascii_lowercase()).filter(|s| !s.is_empty()),
            "source-ip" => r.source_ip = v.split_whitespace().next().map(|ip| ip.trim_matches(['[', ']']).to_string()),
            "source-port" => r.source_port = v.parse().ok(),
            "reported-domain" => r.reported_domains.extend(many()),
            "reported-uri" => r.reported_uris.extend(many()),
            "original-mail-from" => r.original_mail_from = one(),
            "original-rcpt-to" => r.original_rcpt_to.extend(many()),
            "original-envelope-id" => r.original_envelope_id = one(),
            // Received-Date is the pre-RFC 5965 draft's name for Arrival-Date.
            "arrival-date" => r.arrival_date = one(),
            "received-date"
                if r.arrival_date.is_none() => {
                    r.arrival_date = one();
                }
            "reporting-mta" => r.reporting_mta = one(),
            "delivery-result" => r.delivery_result = one(),
            "identity-alignment" => r.identity_alignment = one(),
            "incidents" => r.incidents = v.parse().ok(),
            "authentication-results" => r.authentication_results.extend(many()),
            "dkim-domain" => r.dkim_domain = one(),
            "dkim-identity" => r.dkim_identity = one(),
            "dkim-selector" => r.dkim_selector = one(),
            "dkim-canonicalized-header" => r.dkim_canonicalized_header = one(),
            "dkim-canonicalized-body" => r.dkim_canonicalized_body = one(),
            "dkim-selector-dns" => r.dkim_selector_dns = one(),
            "spf-dns" => r.spf_dns.extend(many()),
            _ => {}
        }
    }
    if !saw_type {
        return None;
    }
    r.fields = fields.into_iter().map(|f| (f.name.to_string(), f.value.into_owned())).collect();
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_failure_fields_are_typed_and_kept_in_order() {
        let text = "Feedback-Type: auth-failure\r\nUser-Agent: Test/1.0\r\nVersion: 1\r\nAuth-Failure: SPF\r\n\
            Source-IP: 192.0.2.1 (mx.example.net)\r\nOriginal-Rcpt-To: <a@example.com>\r\n\
            Original-Rcpt-To: <b@example.com>\r\nSPF-DNS: txt : example.net : v=spf1 -all\r\nIncidents: 3\r\n";
        let r = parse_fields(text, false).expect("report");
        assert_eq!(r.feedback_type, "auth-failure");
        assert_eq!(r.auth_failure.as_deref(), Some("spf"));
        assert_eq!(r.source_ip.as_deref(), Some("192.0.2.1"));
        assert_eq!(r.original_rcpt_to, ["<a@example.com>", "<b@example.com>"]);
        assert_eq!(r.spf_dns, ["txt : example.net : v=spf1 -all"]);
        assert_eq!(r.incidents, Some(3));
        assert_eq!(r.fields.len(), 9);
        assert_eq!(r.fields[0], ("Feedback-Type".to_string(), "auth-failure".to_string()));
    }

    #[test]
    fn long_multibyte_text_is_not_cut_inside_a_character() {
        let text = "é".repeat(3000);
        assert!(!looks_like_feedback(&text));
        assert!(looks_like_feedback("Feedback-Type: abuse\nUser-Agent: x\n"));
    }

    #[test]
    fn no_feedback_type_is_no_report() {
        assert!(parse_fields("User-Agent: x\nVersion: 1\n", false).is_none());
    }

    #[test]
    fn legacy_received_date_is_the_arrival_date() {
        let r = parse_fields("Feedback-Type: abuse\nReceived-Date: Thu, 8 Mar 2005 14:00:00 EDT\n", true).expect("report");
        assert_eq!(r.arrival_date.as_deref(), Some("Thu, 8 Mar 2005 14:00:00 EDT"));
        assert!(r.has_original);
    }
}
