//! `rebound spf check` as a user runs it, against a DNS server on 127.0.0.1 (tests/spf_support).

mod spf_support;

use std::process::Command;

use spf_support::{Rec, start, txt};

fn check(dns: &str, args: &[&str]) -> (String, i32) {
    let out = Command::new(env!("CARGO_BIN_EXE_rebound"))
        .args(["spf", "check", "--dns", dns, "--receiver", "mx.test.example"])
        .args(args)
        .output()
        .expect("run rebound");
    (String::from_utf8_lossy(&out.stdout).into_owned(), out.status.code().unwrap_or(-1))
}

// The binary blocks this thread; the DNS server runs on the runtime's other worker meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_gives_mail_from_then_helo_and_json_gives_the_details() {
    let dns = start(&[
        ("example.com", txt("v=spf1 include:_spf.example.com -all exp=why.example.com")),
        ("_spf.example.com", txt("v=spf1 ip4:192.0.2.0/24 -all")),
        ("why.example.com", txt("%{i} may not send for %{d}")),
        ("mail.example.org", txt("v=spf1 a -all")),
        ("mail.example.org", Rec::A("203.0.113.5")),
    ])
    .await;
    let spec = dns.spec();
    let (text, code) = check(&spec, &["--ip", "203.0.113.5", "--helo", "mail.example.org", "--mail-from", "u@example.com"]);
    assert_eq!(code, 0);
    assert_eq!(text, "fail\npass\n");
    let (null, _) = check(&spec, &["--ip", "203.0.113.5", "--helo", "mail.example.org", "--mail-from", ""]);
    assert_eq!(null, "pass\npass\n", "a null sender is checked as postmaster@HELO");

    let (json, code) = check(&spec, &["--ip", "203.0.113.5", "--helo", "mail.example.org", "--mail-from", "u@example.com", "--format", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["result"], "fail");
    assert_eq!(v["helo_result"], "pass");
    assert_eq!(v["explanation"], "203.0.113.5 may not send for example.com");
    assert_eq!(v["record"], "v=spf1 include:_spf.example.com -all exp=why.example.com");
    assert_eq!(v["mechanism"], "-all");
    assert!(v["received_spf"].as_str().unwrap().starts_with("Received-SPF: fail (mx.test.example: domain of u@example.com"));
    assert_eq!(
        v["authentication_results"],
        "Authentication-Results: mx.test.example; spf=pass smtp.helo=mail.example.org; spf=fail smtp.mailfrom=u@example.com"
    );
    assert_eq!(v["checks"]["mail_from"]["outcome"]["records"].as_array().unwrap().len(), 2);
}

#[test]
fn a_bad_dns_server_or_ip_is_a_usage_error() {
    let (_, code) = check("not-a-server", &["--ip", "192.0.2.1"]);
    assert_eq!(code, 64);
    let (_, code) = check("127.0.0.1:53", &["--ip", "999.1.1.1"]);
    assert_eq!(code, 64);
}
