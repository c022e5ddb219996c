//! The SPF evaluator against a real DNS server on 127.0.0.1 (tests/spf_support): one test per known
//! deviation of mail-auth 0.13.3's SPF from RFC 7208 (named `deviation_*`), and the behaviour the
//! policy server and the reports rely on (identities, limits, explanations, decisions).

mod spf_support;

use std::time::Duration;

use rebound::spf::dns::{DnsOptions, DnsResolver, DnsServers};
use rebound::spf::{SpfResult, Verifier};
use spf_support::{DnsServer, Rec, rev, start, txt};

fn verifier(server: &DnsServer) -> Verifier<DnsResolver> {
    let options = DnsOptions {
        servers: DnsServers::List(vec![server.addr]),
        timeout: Duration::from_millis(300),
        attempts: 1,
        ..DnsOptions::default()
    };
    Verifier::new(DnsResolver::new(&options).expect("resolver"), "mx.test.example")
}

async fn mail_from(server: &DnsServer, ip: &str, from: &str) -> SpfResult {
    verifier(server).check_mail_from(ip.parse().unwrap(), "helo.example.org", from).await.result()
}

#[tokio::test]
async fn deviation_ip4_prefix_over_32_is_permerror() {
    let dns = start(&[("example.com", txt("v=spf1 ip4:192.0.2.1/33 -all"))]).await;
    assert_eq!(mail_from(&dns, "192.0.2.1", "a@example.com").await, SpfResult::PermError);
}

#[tokio::test]
async fn deviation_malformed_terms_anywhere_are_permerror() {
    for record in [
        "v=spf1 ip4:192.0.2.1 -all moo",
        "v=spf1 ip4:192.0.2.1 1up=foo",
        "v=spf1 ip4:192.0.2.1 redirect:other.example.com",
        "v=spf1 -all foo=%abc",
        "v=spf1 ip4:192.0.2.1 a/24/64",
        "v=spf1 +all.",
    ] {
        let dns = start(&[("example.com", txt(record))]).await;
        assert_eq!(mail_from(&dns, "192.0.2.1", "a@example.com").await, SpfResult::PermError, "{record}");
    }
}

#[tokio::test]
async fn deviation_modifiers_twice_or_empty_are_permerror() {
    for record in [
        "v=spf1 -all exp=a.example.com exp=b.example.com",
        "v=spf1 redirect=a.example.com redirect=a.example.com",
        "v=spf1 exp= -all",
        "v=spf1 ?all redirect=",
    ] {
        let dns = start(&[("example.com", txt(record)), ("a.example.com", txt("v=spf1 -all"))]).await;
        assert_eq!(mail_from(&dns, "192.0.2.1", "a@example.com").await, SpfResult::PermError, "{record}");
    }
}

#[tokio::test]
async fn deviation_two_spf_records_are_permerror() {
    let dns = start(&[("example.com", txt("v=spf1 +all")), ("example.com", txt("V=SPF1 -all"))]).await;
    assert_eq!(mail_from(&dns, "192.0.2.1", "a@example.com").await, SpfResult::PermError);
}

#[tokio::test]
async fn deviation_non_ascii_record_is_permerror() {
    let dns = start(&[("example.com", Rec::TxtParts(vec![b"v=spf1 \x80a:example.net -all".to_vec()]))]).await;
    assert_eq!(mail_from(&dns, "192.0.2.1", "a@example.com").await, SpfResult::PermError);
}

#[tokio::test]
async fn deviation_ptr_without_domain_uses_the_current_domain() {
    let dns = start(&[
        ("example.com", txt("v=spf1 ptr -all")),
        (&rev("192.0.2.10"), Rec::Ptr("mail.example.com")),
        ("mail.example.com", Rec::A("192.0.2.10")),
    ])
    .await;
    assert_eq!(mail_from(&dns, "192.0.2.10", "a@example.com").await, SpfResult::Pass);
}

#[tokio::test]
async fn deviation_ptr_works_over_ipv6() {
    let dns = start(&[
        ("example.com", txt("v=spf1 ptr -all")),
        (&rev("2001:db8::25"), Rec::Ptr("mx.Example.com")),
        ("mx.example.com", Rec::Aaaa("2001:db8::25")),
    ])
    .await;
    assert_eq!(mail_from(&dns, "2001:db8::25", "a@example.com").await, SpfResult::Pass);
    // A PTR name whose AAAA does not point back is not validated.
    assert_eq!(mail_from(&dns, "2001:db8::26", "a@example.com").await, SpfResult::Fail);
}

#[tokio::test]
async fn deviation_void_lookup_limit_is_enforced() {
    let two = start(&[("example.com", txt("v=spf1 a:nx1.example.com a:nx2.example.com ?all"))]).await;
    assert_eq!(mail_from(&two, "192.0.2.1", "a@example.com").await, SpfResult::Neutral);
    let three =
        start(&[("example.com", txt("v=spf1 a:nx1.example.com a:nx2.example.com a:nx3.example.com ?all"))]).await;
    assert_eq!(mail_from(&three, "192.0.2.1", "a@example.com").await, SpfResult::PermError);
}

#[tokio::test]
async fn deviation_include_of_a_domain_without_record_is_permerror() {
    let dns = start(&[("example.com", txt("v=spf1 include:nothing.example.com -all")), ("nothing.example.com", Rec::A("192.0.2.9"))]).await;
    assert_eq!(mail_from(&dns, "192.0.2.1", "a@example.com").await, SpfResult::PermError);
}

#[tokio::test]
async fn more_than_ten_dns_terms_is_permerror_and_ten_is_fine() {
    let ten = "v=spf1 a a a a a a a a a a ip4:192.0.2.1 -all";
    let eleven = "v=spf1 a a a a a a a a a a a ip4:192.0.2.1 -all";
    let dns = start(&[("ten.example.com", txt(ten)), ("ten.example.com", Rec::A("198.51.100.1")), ("eleven.example.com", txt(eleven)), ("eleven.example.com", Rec::A("198.51.100.1"))]).await;
    assert_eq!(mail_from(&dns, "192.0.2.1", "a@ten.example.com").await, SpfResult::Pass);
    assert_eq!(mail_from(&dns, "192.0.2.1", "a@eleven.example.com").await, SpfResult::PermError);
}

#[tokio::test]
async fn a_redirect_loop_ends_in_permerror() {
    let dns = start(&[("example.com", txt("v=spf1 redirect=example.com"))]).await;
    assert_eq!(mail_from(&dns, "192.0.2.1", "a@example.com").await, SpfResult::PermError);
}

#[tokio::test]
async fn a_dns_timeout_is_temperror() {
    let dns = start(&[("example.com", Rec::Timeout)]).await;
    assert_eq!(mail_from(&dns, "192.0.2.1", "a@example.com").await, SpfResult::TempError);
}

#[tokio::test]
async fn a_long_record_split_in_strings_is_joined() {
    let mut record = String::from("v=spf1");
    for i in 0..40 {
        record.push_str(&format!(" ip4:198.51.100.{i}"));
    }
    record.push_str(" ip4:192.0.2.1 -all");
    assert!(record.len() > 255);
    let dns = start(&[("example.com", Rec::Txt(record))]).await;
    assert_eq!(mail_from(&dns, "192.0.2.1", "a@example.com").await, SpfResult::Pass);
}

#[tokio::test]
async fn helo_literal_and_single_label_are_skipped_and_null_sender_uses_helo() {
    let dns = start(&[("mail.example.org", txt("v=spf1 ip4:192.0.2.1 -all"))]).await;
    let v = verifier(&dns);
    let ip = "192.0.2.1".parse().unwrap();
    assert_eq!(v.check_helo(ip, "[192.0.2.1]").await.result(), SpfResult::None);
    assert_eq!(v.check_helo(ip, "OEMCOMPUTER").await.result(), SpfResult::None);
    assert_eq!(v.check_helo(ip, "mail.example.org").await.result(), SpfResult::Pass);
    let null = v.check_mail_from(ip, "mail.example.org", "").await;
    assert_eq!(null.sender, "postmaster@mail.example.org");
    assert_eq!(null.result(), SpfResult::Pass);
    let other = v.check_mail_from("192.0.2.2".parse().unwrap(), "mail.example.org", "<>").await;
    assert_eq!(other.result(), SpfResult::Fail);
}

#[tokio::test]
async fn the_decision_names_the_record_and_mechanism_and_exp_explains() {
    let dns = start(&[
        ("example.com", txt("v=spf1 include:_spf.example.com ip4:192.0.2.0/24 -all exp=why.example.com")),
        ("_spf.example.com", txt("v=spf1 ip4:198.51.100.0/24 -all")),
        ("why.example.com", txt("%{i} is not one of %{d}'s senders")),
    ])
    .await;
    let v = verifier(&dns);
    let fail = v.check_mail_from("203.0.113.5".parse().unwrap(), "x.example.org", "u@example.com").await;
    assert_eq!(fail.result(), SpfResult::Fail);
    let d = fail.outcome.decision.as_ref().unwrap();
    assert_eq!(d.mechanism, "-all");
    assert_eq!(d.domain, "example.com");
    assert_eq!(fail.outcome.explanation.as_deref(), Some("203.0.113.5 is not one of example.com's senders"));
    assert_eq!(fail.outcome.records.len(), 2);
    let pass = v.check_mail_from("198.51.100.7".parse().unwrap(), "x.example.org", "u@example.com").await;
    assert_eq!(pass.result(), SpfResult::Pass);
    assert_eq!(pass.outcome.decision.unwrap().mechanism, "include:_spf.example.com");
}

#[tokio::test]
async fn a_txt_record_without_strings_does_not_break_the_lookup() {
    // RFC 7208 §3.3 and the suite's null-text: hickory-proto rejects the whole answer, rebound reads it.
    let dns = start(&[
        ("example.com", Rec::TxtParts(vec![b"v=spf1 ip4:".to_vec(), b"192.0.2.5 -all".to_vec()])),
        ("example.com", Rec::TxtParts(vec![])),
    ])
    .await;
    assert_eq!(mail_from(&dns, "192.0.2.5", "a@example.com").await, SpfResult::Pass);
    assert_eq!(mail_from(&dns, "192.0.2.6", "a@example.com").await, SpfResult::Fail);
}

#[tokio::test]
async fn macro_escapes_make_names_with_spaces_and_percent_signs() {
    // The suite's macro-mania-in-domain, against a server that matches such names exactly.
    let dns = start(&[
        ("example.com", txt("v=spf1 a:macro%%percent%_%_space%-url-space.example.com -all")),
        ("macro%percent  space%20url-space.example.com", Rec::A("192.0.2.4")),
    ])
    .await;
    assert_eq!(mail_from(&dns, "192.0.2.4", "a@example.com").await, SpfResult::Pass);
}
