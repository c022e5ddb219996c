//! The mail side of the report and digest tests (the SMTP sink is `super::smtp_sink`): the DKIM test keys of
//! `tests/fixtures/dkim`, and two independent DKIM verifiers (mail-auth against the test DNS server, and
//! dkimpy when python3-dkim is installed).

use std::net::SocketAddr;
use std::path::Path;

use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};

/// A file of `tests/fixtures/dkim`.
pub fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dkim").join(name)
}

/// A public key of `tests/fixtures/dkim` (base64, as in the DNS record).
pub fn public(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).unwrap().trim().to_string()
}

/// An independent DKIM verifier: dkimpy (Debian's python3-dkim), fed the same public keys: the message
/// must carry one valid signature per key (`selector`, public key file, `k=`), all of domain ours.example.
pub fn dkimpy_verifies(raw: &[u8], keys: &[(&str, &str, &str)]) {
    let ok = std::process::Command::new("/usr/bin/python3").args(["-c", "import dkim"]).output().map(|o| o.status.success());
    if !matches!(ok, Ok(true)) {
        println!("dkimpy check SKIPPED: /usr/bin/python3 cannot import dkim (apt-get install python3-dkim)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let msg = dir.path().join("report.eml");
    std::fs::write(&msg, raw).unwrap();
    let mut records = String::new();
    for (selector, file, k) in keys {
        records.push_str(&format!("b'{selector}._domainkey.ours.example.': b'v=DKIM1; k={k}; p={}',", public(file)));
    }
    let n = keys.len();
    let script = format!(
        "import dkim, sys\nrecs = {{{records}}}\nmsg = open(sys.argv[1], 'rb').read()\n\
         def dns(name, timeout=5):\n    return recs.get(name if name.endswith(b'.') else name + b'.')\n\
         d = dkim.DKIM(msg)\nn = sum(1 for h in d.headers if h[0].lower() == b'dkim-signature')\n\
         ok = [d.verify(idx=i, dnsfunc=dns) for i in range(n)]\nprint(ok)\nsys.exit(0 if len(ok) == {n} and all(ok) else 1)\n"
    );
    let out = std::process::Command::new("/usr/bin/python3").arg("-c").arg(&script).arg(&msg).output().unwrap();
    assert!(out.status.success(), "dkimpy: {} {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// Verifies every DKIM signature of `raw` with mail-auth, resolving keys through the test DNS server at
/// `dns`; asserts they all pass and returns how many there were.
pub async fn mail_auth_verifies(dns: SocketAddr, raw: &[u8]) -> usize {
    let mut config = mail_auth::hickory_resolver::config::ResolverConfig::from_parts(None, vec![], vec![]);
    let mut udp = mail_auth::hickory_resolver::config::ConnectionConfig::udp();
    udp.port = dns.port();
    config.add_name_server(mail_auth::hickory_resolver::config::NameServerConfig::new(dns.ip(), true, vec![udp]));
    let auth = MessageAuthenticator::new(config, Default::default()).unwrap();
    let message = AuthenticatedMessage::parse(raw).unwrap();
    let results = auth.verify_dkim(&message).await;
    for r in &results {
        assert_eq!(r.result(), &DkimResult::Pass, "{:?}", results.iter().map(|r| (r.signature().map(|s| s.s.clone()), r.result().clone())).collect::<Vec<_>>());
    }
    results.len()
}
