//! The SPF failure report itself: an RFC 5965 ARF message of `Feedback-Type: auth-failure` with
//! `Auth-Failure: spf` (RFC 6591), built with mail-auth's [`Feedback`] for the fields and mail-builder for
//! the MIME structure. What others leave out is here: every SPF record evaluated (`SPF-DNS`, one field
//! per record), the mechanism that decided (in Authentication-Results and the text part), Source-IP,
//! Original-Mail-From, Original-Rcpt-To, Reported-Domain, and the header lines we know (a
//! text/rfc822-headers part). The feedback part is written 7bit (RFC 5965 §2), not quoted-printable.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use mail_auth::report::{AuthFailureType, DeliveryResult, Feedback, FeedbackType, IdentityAlignment};
use mail_builder::MessageBuilder;
use mail_builder::headers::HeaderType;
use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::text::Text;
use mail_builder::mime::{BodyPart, MimePart};

use crate::spf::IdentityCheck;
use crate::spf::headers::{printable, quoted};

/// Everything one report says.
#[derive(Debug, Clone)]
pub struct FailureReport<'a> {
    /// Our host name (Reporting-MTA, Message-ID domain).
    pub reporting_mta: &'a str,
    /// When the SMTP transaction happened.
    pub arrival: DateTime<Utc>,
    /// The SMTP client.
    pub source_ip: IpAddr,
    /// The MAIL FROM as sent (empty for `<>`).
    pub original_mail_from: &'a str,
    /// The recipients known.
    pub original_rcpt_to: &'a [String],
    /// The check that failed.
    pub check: &'a IdentityCheck,
    /// What happened to the message: rejected (strict policy) or delivered with a header.
    pub rejected: bool,
    /// Header lines known of the message (e.g. the Received-SPF we added), without line ends.
    pub headers: &'a [String],
    /// The Authentication-Results field for the report.
    pub authentication_results: &'a str,
}

/// Builds the report message (without DKIM signature). `to` is the RFC 6652 reporting address.
pub fn build(report: &FailureReport<'_>, from_name: &str, from_address: &str, to: &str, subject: &str) -> Vec<u8> {
    let outcome = &report.check.outcome;
    let mechanism = outcome.decision.as_ref().map(|d| d.mechanism.as_str()).unwrap_or("(none)");
    let mail_from = if report.original_mail_from.is_empty() { "<>".to_string() } else { format!("<{}>", printable(report.original_mail_from)) };
    let rcpts: Vec<String> = report.original_rcpt_to.iter().map(|r| format!("<{}>", printable(r))).collect();
    let spf_dns: Vec<String> =
        outcome.records.iter().map(|r| format!("txt : {} : {}", printable(&r.domain), quoted(&r.record))).collect();
    let domain = printable(&outcome.domain);

    let mut feedback = Feedback::new(FeedbackType::AuthFailure)
        .with_version(1)
        .with_auth_failure(AuthFailureType::Spf)
        .with_arrival_date(report.arrival.timestamp())
        .with_reporting_mta(printable(report.reporting_mta))
        .with_user_agent(format!("rebound/{}", env!("CARGO_PKG_VERSION")))
        .with_source_ip(report.source_ip.to_canonical())
        .with_original_mail_from(mail_from.clone())
        .with_reported_domain(domain.clone())
        .with_authentication_results(printable(report.authentication_results))
        .with_identity_alignment(IdentityAlignment::None)
        .with_delivery_result(if report.rejected { DeliveryResult::Reject } else { DeliveryResult::Delivered });
    if let Some(first) = spf_dns.first() {
        feedback = feedback.with_spf_dns(first.clone());
    }
    if let Some(first) = rcpts.first() {
        feedback = feedback.with_original_rcpt_to(first.clone());
    }
    let mut arf = feedback.to_arf();
    for extra in spf_dns.iter().skip(1) {
        arf.push_str(&format!("SPF-DNS: {extra}\r\n"));
    }
    for extra in rcpts.iter().skip(1) {
        arf.push_str(&format!("Original-Rcpt-To: {extra}\r\n"));
    }
    let arf = fold_lines(&arf);

    let mut text = format!(
        "This is an SPF authentication failure report (RFC 6591) for a message received\r\n\
         from IP address {ip} on {date}.\r\n\r\n\
         Identity checked: {identity} {sender}\r\n\
         SPF result: {result} for domain {domain}\r\n\
         Mechanism that decided: {mechanism}\r\n",
        ip = report.source_ip.to_canonical(),
        date = report.arrival.to_rfc2822(),
        identity = report.check.identity.as_str(),
        sender = printable(&report.check.sender),
        result = outcome.result,
        mechanism = printable(mechanism),
    );
    if let Some(d) = &outcome.decision {
        text.push_str(&format!("Record of {}: {}\r\n", printable(&d.domain), printable(&d.record)));
    }
    if let Some(e) = &outcome.explanation {
        text.push_str(&format!("Explanation published by the domain: {}\r\n", printable(e)));
    }
    text.push_str(&format!(
        "\r\nThe message was {}.\r\nYou receive this report because the SPF record of {domain} asks for it (RFC 6652 ra=).\r\n",
        if report.rejected { "rejected" } else { "accepted and marked" }
    ));
    let text = fold_lines(&text);
    let mut header_block = String::new();
    for h in report.headers {
        header_block.push_str(&printable(h));
        header_block.push_str("\r\n");
    }
    let header_block = fold_lines(&header_block);

    let mut parts = vec![
        MimePart::new(ContentType::new("text/plain").attribute("charset", "us-ascii"), BodyPart::Text(text.into()))
            .transfer_encoding("7bit"),
        MimePart::new(ContentType::new("message/feedback-report"), BodyPart::Text(arf.into())).transfer_encoding("7bit"),
    ];
    if !header_block.is_empty() {
        parts.push(
            MimePart::new(ContentType::new("text/rfc822-headers"), BodyPart::Text(header_block.into()))
                .transfer_encoding("7bit"),
        );
    }
    let id = format!("{}.{}@{}", report.arrival.timestamp_micros(), rand::random::<u64>(), printable(report.reporting_mta));
    MessageBuilder::new()
        .from(Address::new_address(Some(printable(from_name)).filter(|n| !n.is_empty()), printable(from_address)))
        .to(Address::new_address(None::<String>, printable(to)))
        .subject(Text::new(printable(subject)))
        .message_id(id)
        .header("Auto-Submitted", HeaderType::Text("auto-generated".into()))
        .body(MimePart::new(
            ContentType::new("multipart/report").attribute("report-type", "feedback-report"),
            BodyPart::Multipart(parts),
        ))
        .write_to_vec()
        .unwrap_or_default()
}

/// Folds every CRLF line longer than 78 characters at spaces (continuation lines start with a space), and
/// hard-splits what cannot be folded at 998, so the 7bit parts stay within RFC 5322's limits.
fn fold_lines(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 64);
    for line in s.split("\r\n") {
        let mut rest = line;
        while rest.len() > 78 {
            let window = &rest[..78.min(rest.len())];
            match window.rfind(' ').filter(|&p| p > 0) {
                Some(p) => {
                    out.push_str(&rest[..p]);
                    out.push_str("\r\n");
                    rest = &rest[p..];
                }
                None => {
                    let next = rest[1..].find(' ').map(|p| p + 1).unwrap_or(rest.len()).min(998);
                    if next >= rest.len() {
                        break;
                    }
                    out.push_str(&rest[..next]);
                    out.push_str("\r\n");
                    rest = &rest[next..];
                    if !rest.starts_with(' ') {
                        out.push(' ');
                    }
                }
            }
        }
        out.push_str(rest);
        out.push_str("\r\n");
    }
    // split() yields a last empty piece for text ending in CRLF; drop the extra line end it made.
    if s.ends_with("\r\n") {
        out.truncate(out.len() - 2);
    }
    out
}
