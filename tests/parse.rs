//! Behaviour of `rebound::parse` on hand-written fixtures (tests/fixtures/messages, see its README):
//! each kind of report, each line ending, and bad input that must never panic.

use std::path::PathBuf;

use rebound::parse::{Kind, Parsed, parse};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/messages").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()))
}

fn to_crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 20);
    for &b in raw {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

fn to_cr(raw: &[u8]) -> Vec<u8> {
    raw.iter().map(|&b| if b == b'\n' { b'\r' } else { b }).collect()
}

fn rcpts(p: &Parsed) -> Vec<&str> {
    p.recipients.iter().map(|r| r.recipient.as_str()).collect()
}

/// Parses a fixture with LF, CRLF and CR-only line ends and checks the three agree.
fn parse_all_endings(name: &str) -> Parsed {
    let raw = fixture(name);
    let lf = parse(&raw);
    for (label, variant) in [("CRLF", to_crlf(&raw)), ("CR", to_cr(&raw))] {
        let other = parse(&variant);
        assert_eq!(other.kind, lf.kind, "{name} {label}: kind differs");
        assert_eq!(rcpts(&other), rcpts(&lf), "{name} {label}: recipients differ");
        for (a, b) in other.recipients.iter().zip(&lf.recipients) {
            assert_eq!(a.status, b.status, "{name} {label}: status differs");
            assert_eq!(a.reply_code, b.reply_code, "{name} {label}: reply code differs");
            assert_eq!(a.diagnostic, b.diagnostic, "{name} {label}: diagnostic differs");
            assert_eq!(a.smtp_command, b.smtp_command, "{name} {label}: smtp command differs");
        }
        assert_eq!(other.feedback, lf.feedback, "{name} {label}: feedback differs");
        assert_eq!(other.original, lf.original, "{name} {label}: original differs");
    }
    lf
}

#[test]
fn dsn_reads_every_per_recipient_field() {
    let p = parse_all_endings("dsn-postfix.eml");
    assert_eq!(p.kind, Kind::Dsn);
    assert_eq!(p.subject.as_deref(), Some("Undelivered Mail Returned to Sender"));
    assert_eq!(p.message_id.as_deref(), Some("20261201100005.A1B2C3@mx1.example.com"));
    assert_eq!(rcpts(&p), ["nobody@example.org", "full@example.net"]);
    let a = &p.recipients[0];
    assert_eq!(a.original_recipient.as_deref(), Some("Nobody@example.org"));
    assert_eq!(a.action.as_deref(), Some("failed"));
    assert_eq!(a.status.as_deref(), Some("5.1.1"));
    assert_eq!(a.reply_code, Some(550));
    assert_eq!(a.diagnostic_type.as_deref(), Some("smtp"));
    assert_eq!(
        a.diagnostic.as_deref(),
        Some("550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown in virtual mailbox table")
    );
    assert_eq!(a.smtp_command.as_deref(), Some("RCPT"), "command comes from the human-readable part");
    assert_eq!(a.remote_mta.as_deref(), Some("mx.example.org"));
    assert_eq!(a.reporting_mta.as_deref(), Some("mx1.example.com"));
    assert_eq!(a.arrival_date.as_deref(), Some("Tue, 1 Dec 2026 10:00:01 +0000 (UTC)"));
    let b = &p.recipients[1];
    assert_eq!(b.status.as_deref(), Some("5.2.2"));
    assert_eq!(b.reply_code, Some(552));
    assert_eq!(b.smtp_command.as_deref(), Some("DATA"));
    assert_eq!(b.last_attempt_date.as_deref(), Some("Tue, 1 Dec 2026 10:00:04 +0000 (UTC)"));
    let o = p.original.expect("original message headers");
    assert_eq!(o.message_id.as_deref(), Some("figures-2026@example.com"));
    assert_eq!(o.from.as_deref(), Some("sender@example.com"));
    assert_eq!(o.to.as_deref(), Some("nobody@example.org"));
    assert_eq!(o.subject.as_deref(), Some("Quarterly figures"));
    assert!(p.parse_error.is_none());
}

#[test]
fn delayed_dsn_with_rfc822_headers_part() {
    let p = parse_all_endings("dsn-delayed-headers-only.eml");
    assert_eq!(p.kind, Kind::Dsn);
    assert_eq!(rcpts(&p), ["slow@example.org"]);
    let r = &p.recipients[0];
    assert_eq!(r.action.as_deref(), Some("delayed"));
    assert_eq!(r.status.as_deref(), Some("4.4.1"));
    assert_eq!(r.diagnostic_type, None);
    assert!(r.diagnostic.as_deref().is_some_and(|d| d.contains("Connection timed out")), "{:?}", r.diagnostic);
    assert_eq!(r.smtp_command.as_deref(), Some("CONN"));
    let o = p.original.expect("headers part");
    assert_eq!(o.message_id.as_deref(), Some("minutes-42@example.com"));
    assert_eq!(o.subject.as_deref(), Some("Minutes of the meeting"));
}

#[test]
fn qmail_free_text_bounce() {
    let p = parse_all_endings("bounce-qmail.eml");
    assert_eq!(p.kind, Kind::Bounce);
    assert_eq!(rcpts(&p), ["gone@example.org"]);
    let r = &p.recipients[0];
    assert_eq!(r.status.as_deref(), Some("5.1.1"));
    assert_eq!(r.reply_code, Some(550));
    assert!(r.diagnostic.as_deref().is_some_and(|d| d.contains("Recipient address rejected")));
    assert_eq!(r.reporting_mta.as_deref(), Some("mail.example.net"));
    assert_eq!(p.original.and_then(|o| o.message_id).as_deref(), Some("20261201091159.4242.qmail@mail.example.net"));
}

#[test]
fn exim_free_text_bounce_with_two_recipients() {
    let p = parse_all_endings("bounce-exim.eml");
    assert_eq!(p.kind, Kind::Bounce);
    assert_eq!(rcpts(&p), ["nouser@example.org", "quota@example.net"]);
    assert_eq!(p.recipients[0].status.as_deref(), Some("5.1.1"));
    assert_eq!(p.recipients[0].smtp_command.as_deref(), Some("RCPT"));
    assert_eq!(p.recipients[0].remote_mta.as_deref(), Some("mx.example.org"));
    assert_eq!(p.recipients[1].remote_mta.as_deref(), Some("mx.example.net"));
    assert_eq!(p.recipients[1].status.as_deref(), Some("4.2.2"));
    assert_eq!(p.recipients[1].reply_code, Some(452));
    assert_eq!(p.recipients[1].smtp_command.as_deref(), Some("DATA"));
}

#[test]
fn sendmail_free_text_bounce_with_transcript() {
    let p = parse_all_endings("bounce-sendmail.eml");
    assert_eq!(p.kind, Kind::Bounce);
    assert_eq!(rcpts(&p), ["unknown@example.org"], "the sender in the transcript is not a recipient");
    assert_eq!(p.recipients[0].status.as_deref(), Some("5.1.1"));
    assert_eq!(p.recipients[0].reply_code, Some(550));
    assert_eq!(p.recipients[0].smtp_command.as_deref(), Some("RCPT"), "from the transcript, not MAIL before it");
}

#[test]
fn dsn_command_read_from_the_transcript_of_its_text_part() {
    let p = parse_all_endings("dsn-sendmail-transcript.eml");
    assert_eq!(p.kind, Kind::Dsn);
    assert_eq!(rcpts(&p), ["nobody@example.org"]);
    let r = &p.recipients[0];
    assert_eq!(r.diagnostic.as_deref(), Some("550 Unknown user nobody@example.org"), "the DSN's own Diagnostic-Code");
    assert_eq!(r.smtp_command.as_deref(), Some("DATA"), "the command before the quoted reply in the transcript");
}

#[test]
fn dsn_reason_read_after_a_quoted_header_excerpt() {
    let p = parse_all_endings("dsn-quoted-header-excerpt.eml");
    assert_eq!(p.kind, Kind::Dsn);
    assert_eq!(rcpts(&p), ["bob@gone.example.org"]);
    let r = &p.recipients[0];
    assert_eq!(r.status.as_deref(), Some("5.4.4"));
    let diagnostic = r.diagnostic.as_deref().unwrap_or_default();
    assert!(diagnostic.contains("Illegal host/domain name found"), "the reason, not the quoted To: line: {diagnostic:?}");
    assert!(!diagnostic.contains("Quarterly"), "{diagnostic:?}");
}

#[test]
fn html_only_exchange_report() {
    let p = parse_all_endings("bounce-exchange-html.eml");
    assert_eq!(p.kind, Kind::Bounce);
    assert_eq!(rcpts(&p), ["finance.head@corp.example.com"]);
    assert_eq!(p.recipients[0].status.as_deref(), Some("5.1.10"));
    assert_eq!(p.recipients[0].reply_code, Some(550));
}

#[test]
fn arf_abuse_report_keeps_every_field() {
    let p = parse_all_endings("arf-abuse.eml");
    assert_eq!(p.kind, Kind::Arf);
    let f = p.feedback.as_ref().expect("feedback");
    assert_eq!(f.feedback_type, "abuse");
    assert_eq!(f.version.as_deref(), Some("1"));
    assert_eq!(f.original_rcpt_to, ["<reader@isp.example.net>", "<second@isp.example.net>"]);
    assert_eq!(f.reported_uris, ["http://example.com/unsubscribe"]);
    assert_eq!(f.incidents, Some(2));
    assert_eq!(f.reporting_mta.as_deref(), Some("dns; mail.isp.example.net"));
    assert!(f.has_original);
    assert_eq!(f.fields.len(), 12);
    assert_eq!(f.fields[5].0, "Original-Rcpt-To");
    assert_eq!(rcpts(&p), ["reader@isp.example.net", "second@isp.example.net"], "one recipient per Original-Rcpt-To");
    assert_eq!(p.original.and_then(|o| o.subject).as_deref(), Some("Weekly offers"));
}

#[test]
fn rfc6591_dkim_auth_failure_report() {
    let p = parse_all_endings("arf-auth-failure-dkim.eml");
    assert_eq!(p.kind, Kind::Arf);
    let f = p.feedback.expect("feedback");
    assert_eq!(f.feedback_type, "auth-failure");
    assert_eq!(f.auth_failure.as_deref(), Some("signature"));
    assert_eq!(f.source_ip.as_deref(), Some("203.0.113.5"));
    assert_eq!(f.source_port, Some(52100));
    assert_eq!(f.delivery_result.as_deref(), Some("spam"));
    assert_eq!(f.identity_alignment.as_deref(), Some("none"));
    assert_eq!(f.dkim_domain.as_deref(), Some("sender.example"));
    assert_eq!(f.dkim_identity.as_deref(), Some("@sender.example"));
    assert_eq!(f.dkim_selector.as_deref(), Some("sel1"));
    assert_eq!(f.dkim_canonicalized_header.as_deref(), Some("ZnJvbTpuZXdzQHNlbmRlci5leGFtcGxl"));
    assert_eq!(f.dkim_canonicalized_body.as_deref(), Some("SGVsbG8="));
    assert_eq!(f.dkim_selector_dns.as_deref(), Some("v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3"));
    assert_eq!(
        f.authentication_results,
        ["mx.receiver.example.org; dkim=fail reason=\"signature verification failed\" header.d=sender.example header.s=sel1"]
    );
    assert_eq!(f.reported_domains, ["sender.example"]);
    assert!(f.has_original, "text/rfc822-headers counts as the original");
    assert!(f.fields.iter().any(|(n, v)| n == "Source-IP" && v == "203.0.113.5 (out.sender.example)"));
}

#[test]
fn bare_feedback_block_without_mime() {
    let p = parse_all_endings("arf-bare-spf.eml");
    assert_eq!(p.kind, Kind::Arf);
    let f = p.feedback.as_ref().expect("feedback");
    assert_eq!(f.auth_failure.as_deref(), Some("spf"));
    assert_eq!(f.version.as_deref(), Some("1.0"));
    assert_eq!(f.spf_dns.len(), 2);
    assert!(!f.has_original);
    assert_eq!(rcpts(&p), ["monitor.example"], "no Original-Rcpt-To: the reported domain stands in");
}

#[test]
fn vacation_reply_by_headers() {
    let p = parse_all_endings("autoreply-vacation.eml");
    assert_eq!(p.kind, Kind::Autoreply);
    assert_eq!(rcpts(&p), ["colleague@example.org"]);
    assert!(p.recipients[0].diagnostic.as_deref().is_some_and(|d| d.starts_with("I am away")));
}

#[test]
fn vacation_reply_by_encoded_subject() {
    let p = parse_all_endings("autoreply-subject-only.eml");
    assert_eq!(p.kind, Kind::Autoreply);
    assert_eq!(rcpts(&p), ["marie.dupont@example.fr"]);
}

#[test]
fn amazon_ses_json_notification() {
    let p = parse_all_endings("ses-bounce.eml");
    assert_eq!(p.kind, Kind::Bounce);
    assert_eq!(rcpts(&p), ["missing@customer.example"]);
    let r = &p.recipients[0];
    assert_eq!((r.status.as_deref(), r.reply_code), (Some("5.1.1"), Some(550)));
    assert_eq!(r.reporting_mta.as_deref(), Some("a1-2.smtp-out.example.com"));
}

#[test]
fn ordinary_mail_stays_unparsed_with_a_reason() {
    let p = parse_all_endings("not-a-bounce.eml");
    assert_eq!(p.kind, Kind::Unparsed);
    assert!(p.recipients.is_empty());
    assert!(p.parse_error.is_some());
    assert_eq!(p.subject.as_deref(), Some("Our December newsletter"), "headers are still read");
}

#[test]
fn truncated_mime_still_yields_the_recipient() {
    let p = parse_all_endings("malformed-truncated-mime.eml");
    assert_eq!(p.kind, Kind::Dsn);
    assert_eq!(rcpts(&p), ["lost@example.org"]);
    assert_eq!(p.recipients[0].status.as_deref(), Some("5.1.1"), "status from the text part");
    assert_eq!(p.recipients[0].smtp_command.as_deref(), Some("RCPT"));
}

#[test]
fn eight_bit_headers_and_unknown_charset() {
    let p = parse_all_endings("malformed-8bit-charset.eml");
    assert_eq!(p.kind, Kind::Bounce);
    assert_eq!(rcpts(&p), ["absent@example.org"]);
    assert_eq!(p.recipients[0].status.as_deref(), Some("5.1.1"));
    assert!(p.subject.is_some_and(|s| s.starts_with("Mail delivery failed")));
}

#[test]
fn empty_and_blank_input_is_unparsed() {
    for raw in [&b""[..], b"\n", b"\r\n\r\n", b"   \t  "] {
        let p = parse(raw);
        assert_eq!(p.kind, Kind::Unparsed);
        assert_eq!(p.parse_error.as_deref(), Some("empty message"));
    }
}

#[test]
fn binary_garbage_is_unparsed_without_panic() {
    // A deterministic pseudo-random byte stream (xorshift), plus NUL-heavy and 0xFF-heavy inputs.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let noise: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for raw in [noise.clone(), vec![0u8; 4096], vec![0xFF; 4096]] {
        let p = parse(&raw);
        assert_eq!(p.kind, Kind::Unparsed);
        assert!(p.parse_error.as_deref().is_some_and(|e| !e.contains("internal error")), "{:?}", p.parse_error);
    }
    // Every prefix of a real report parses without reaching the last-resort guard.
    let dsn = fixture("dsn-postfix.eml");
    for cut in (0..dsn.len()).step_by(7) {
        let p = parse(&dsn[..cut]);
        assert!(!p.parse_error.as_deref().is_some_and(|e| e.contains("internal error")), "prefix {cut}");
    }
    // Random bytes spliced into a real report.
    let mut spliced = dsn.clone();
    for (i, b) in noise.iter().take(2000).enumerate() {
        let at = (i * 131) % spliced.len();
        spliced[at] = *b;
    }
    let p = parse(&spliced);
    assert!(!p.parse_error.as_deref().is_some_and(|e| e.contains("internal error")));
}

#[test]
fn deeply_nested_multiparts_are_bounded() {
    let depth = 5_000;
    let mut raw = String::from("From: MAILER-DAEMON@example.net\nSubject: nested\nMIME-Version: 1.0\n");
    for i in 0..depth {
        raw.push_str(&format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\n\n--b{i}\n"));
    }
    raw.push_str("Content-Type: text/plain\n\n<deep@example.org>: 550 5.1.1 unknown user\n");
    for i in (0..depth).rev() {
        raw.push_str(&format!("--b{i}--\n"));
    }
    let p = parse(raw.as_bytes());
    assert!(!p.parse_error.as_deref().is_some_and(|e| e.contains("internal error")));

}

/// Regression: 60,000 message/rfc822 parts nested in each other (3 MB) overflowed a 2 MB thread stack when
/// the parsed tree was dropped, aborting the process (no panic to catch).
#[test]
fn deeply_nested_messages_do_not_overflow_the_stack() {
    let mut nested = String::new();
    for _ in 0..60_000 {
        nested.push_str("From: a@example.net\nContent-Type: message/rfc822\n\n");
    }
    nested.push_str("From: b@example.net\n\nbody\n");
    let worker = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || parse(nested.as_bytes()))
        .expect("spawn a thread with a 2 MB stack");
    let p = worker.join().expect("parse returned without overflowing the stack");
    assert_eq!(p.kind, Kind::Unparsed);
    assert!(!p.parse_error.as_deref().is_some_and(|e| e.contains("internal error")));
}

#[test]
fn huge_input_is_parsed_in_bounded_time() {
    let mut raw = fixture("bounce-exim.eml");
    let filler = "x".repeat(76) + "\n";
    for _ in 0..(40 * 1024 * 1024 / filler.len()) {
        raw.extend_from_slice(filler.as_bytes());
    }
    let start = std::time::Instant::now();
    let p = parse(&raw);
    assert_eq!(p.kind, Kind::Bounce);
    assert_eq!(rcpts(&p), ["nouser@example.org", "quota@example.net"]);
    assert!(start.elapsed().as_secs() < 20, "took {:?}", start.elapsed());
}

#[test]
fn unparsed_constructor_keeps_the_reason() {
    let p = Parsed::unparsed("message over the size limit");
    assert_eq!(p.kind, Kind::Unparsed);
    assert_eq!(p.parse_error.as_deref(), Some("message over the size limit"));
    assert!(p.recipients.is_empty() && p.feedback.is_none() && p.original.is_none());
}

#[test]
fn report_forwarded_as_an_attachment_is_read_from_the_attachment() {
    let p = parse_all_endings("dsn-forwarded-as-attachment.eml");
    assert_eq!(p.kind, Kind::Dsn);
    assert_eq!(rcpts(&p), ["nobody@example.org"]);
    assert_eq!(p.recipients[0].status.as_deref(), Some("5.1.1"));
    assert_eq!(p.message_id.as_deref(), Some("inner-dsn-1@mx.example.net"));
    assert!(p.parse_error.as_deref().is_some_and(|e| e.contains("attached")));
}

#[test]
fn dsn_fields_pasted_into_text() {
    let p = parse_all_endings("bounce-dsn-fields-in-text.eml");
    assert_eq!(p.kind, Kind::Bounce);
    assert_eq!(rcpts(&p), ["buyer@example.org"]);
    let r = &p.recipients[0];
    assert_eq!((r.action.as_deref(), r.status.as_deref(), r.reply_code), (Some("failed"), Some("5.2.2"), Some(550)));
    assert_eq!(r.reporting_mta.as_deref(), Some("out-1.mail.example.net"));
    assert_eq!(p.original.and_then(|o| o.message_id).as_deref(), Some("order-77@example.com"));
}

#[test]
fn local_part_only_recipient_is_completed_from_received_for() {
    let p = parse_all_endings("bounce-local-part-only.eml");
    assert_eq!(p.kind, Kind::Bounce);
    assert_eq!(rcpts(&p), ["kuro@example.net"], "the sender quoted in the reply is not the recipient");
    let r = &p.recipients[0];
    assert_eq!((r.status.as_deref(), r.reply_code), (Some("5.7.0"), Some(550)));
    assert_eq!(r.smtp_command.as_deref(), Some("MAIL"));
}

#[test]
fn feedback_fields_in_a_text_body() {
    let p = parse_all_endings("arf-fields-in-text-body.eml");
    assert_eq!(p.kind, Kind::Arf);
    let f = p.feedback.as_ref().expect("feedback");
    assert_eq!((f.feedback_type.as_str(), f.source_ip.as_deref()), ("abuse", Some("192.0.2.44")));
    assert_eq!(rcpts(&p), ["member@mailbox.example.net"]);
    assert_eq!(p.subject.as_deref(), Some("Fwd: complaint report"));
}

#[test]
fn cr_only_file_with_a_stray_lf_is_still_read_as_cr_only() {
    let mut raw = to_cr(&fixture("bounce-qmail.eml"));
    raw.extend_from_slice(b"trailing line\n");
    let p = parse(&raw);
    assert_eq!(p.kind, Kind::Bounce);
    assert_eq!(rcpts(&p), ["gone@example.org"]);
}

#[test]
fn a_text_full_of_addresses_is_read_in_bounded_time() {
    let mut raw = String::from("From: MAILER-DAEMON@example.net\nSubject: Undelivered Mail\n\n");
    for i in 0..50_000 {
        raw.push_str(&format!("<user{i}@example.org>: 550 5.1.1 unknown\n"));
    }
    let start = std::time::Instant::now();
    let p = parse(raw.as_bytes());
    assert_eq!(p.kind, Kind::Bounce);
    assert!(!p.recipients.is_empty() && p.recipients.len() <= 100, "{} recipients", p.recipients.len());
    assert!(start.elapsed().as_secs() < 20, "took {:?}", start.elapsed());
}

#[test]
fn mailing_list_refusal_names_the_list_and_explains() {
    let p = parse_all_endings("bounce-list-not-member.eml");
    assert_eq!(p.kind, Kind::Bounce);
    assert_eq!(rcpts(&p), ["cats@lists.example.org"]);
    let d = p.recipients[0].diagnostic.as_deref().expect("diagnostic");
    assert!(d.starts_with("Only members may post to the mailing list <cats@lists.example.org>, and you are not one"), "{d}");
    assert!(d.ends_with("cats-ctl@lists.example.org"), "stops before the quoted post: {d}");
}

#[test]
fn complaint_with_only_the_message_attached_is_an_abuse_report() {
    let p = parse_all_endings("arf-complaint-attachment-only.eml");
    assert_eq!(p.kind, Kind::Arf);
    let f = p.feedback.as_ref().expect("feedback report");
    assert_eq!(f.feedback_type, "abuse");
    assert!(f.has_original);
    assert!(f.fields.is_empty(), "no fields were sent");
    assert_eq!(rcpts(&p), ["reader@feedback.example.net"], "the complained-about message's recipient");
    assert_eq!(p.recipients[0].diagnostic.as_deref(), Some("Complaint about message from 198.51.100.25"));
}

#[test]
fn ordinary_message_with_an_attached_message_is_not_a_complaint() {
    let raw = String::from_utf8(fixture("arf-complaint-attachment-only.eml")).expect("utf-8")
        .replace("Subject: Complaint about message from 198.51.100.25", "Subject: Fwd: Weekly offers");
    let p = parse(raw.as_bytes());
    assert_eq!(p.kind, Kind::Unparsed, "{:?}", p.parse_error);
}

#[test]
fn local_mailer_exit_status_is_written_out() {
    let p = parse_all_endings("dsn-local-mailer-exit-status.eml");
    assert_eq!(p.kind, Kind::Dsn);
    let r = &p.recipients[0];
    assert_eq!(r.diagnostic_type.as_deref(), Some("x-unix"));
    assert_eq!(
        r.diagnostic.as_deref(),
        Some("mailer program exited with status 75 (EX_TEMPFAIL: temporary failure, try again later)")
    );
    assert_eq!(r.status.as_deref(), Some("4.3.0"));
    assert_eq!(r.reply_code, None);
}

#[test]
fn dsn_command_named_after_the_quoted_reply_in_the_text() {
    let p = parse_all_endings("dsn-command-after-the-reply.eml");
    assert_eq!(p.kind, Kind::Dsn);
    assert_eq!(rcpts(&p), ["someone@example.net"]);
    let r = &p.recipients[0];
    assert_eq!(r.reply_code, Some(550));
    assert_eq!(r.smtp_command.as_deref(), Some("RCPT"));
}

#[test]
fn feedback_summary_skips_a_salutation() {
    let p = parse_all_endings("arf-salutation-first.eml");
    assert_eq!(p.kind, Kind::Arf);
    assert_eq!(
        p.recipients[0].diagnostic.as_deref(),
        Some("a user of our service marked the attached message as spam; please look into it.")
    );
}
