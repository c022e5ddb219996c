//! The mail side of the report and digest tests: an SMTP sink on 127.0.0.1 (a small server that records
//! what it receives and answers RCPT with the codes a test gives), the DKIM test keys of
//! `tests/fixtures/dkim`, and two independent DKIM verifiers (mail-auth against the test DNS server, and
//! dkimpy when python3-dkim is installed).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A file of `tests/fixtures/dkim`.
pub fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dkim").join(name)
}

/// A public key of `tests/fixtures/dkim` (base64, as in the DNS record).
pub fn public(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).unwrap().trim().to_string()
}

/// What the sink received: (MAIL FROM, RCPT TO, DATA).
pub type Inbox = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// A small SMTP server: answers RCPT with the next code from `rcpt_codes` (250 when empty).
pub async fn smtp_sink(rcpt_codes: Arc<Mutex<VecDeque<u16>>>) -> (SocketAddr, Inbox) {
    sink(Arc::new(move |_: &str| rcpt_codes.lock().unwrap().pop_front().unwrap_or(250))).await
}

/// A small SMTP server: answers RCPT TO:<address> with the code `codes` gives the address (250 when none).
pub async fn smtp_sink_by_recipient(codes: HashMap<String, u16>) -> (SocketAddr, Inbox) {
    sink(Arc::new(move |rcpt: &str| {
        let address = rcpt.trim().trim_start_matches('<').trim_end_matches('>');
        codes.get(address).copied().unwrap_or(250)
    }))
    .await
}

/// The RCPT reply code for a `RCPT TO:` argument.
type Answer = Arc<dyn Fn(&str) -> u16 + Send + Sync>;

async fn sink(answer: Answer) -> (SocketAddr, Inbox) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let inbox: Inbox = Arc::default();
    let inbox2 = inbox.clone();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else { return };
            let inbox = inbox2.clone();
            let answer = answer.clone();
            tokio::spawn(async move {
                let (r, mut w) = conn.into_split();
                let mut r = BufReader::new(r);
                let _ = w.write_all(b"220 sink.test ESMTP\r\n").await;
                let (mut from, mut to) = (String::new(), String::new());
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let upper = line.to_ascii_uppercase();
                    let reply: String = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                        "250-sink.test\r\n250 8BITMIME\r\n".into()
                    } else if upper.starts_with("MAIL FROM:") {
                        from = line[10..].trim().to_string();
                        "250 ok\r\n".into()
                    } else if upper.starts_with("RCPT TO:") {
                        to = line[8..].trim().to_string();
                        match answer(&to) {
                            250 => "250 ok\r\n".into(),
                            code => format!("{code} {}.0.0 not now\r\n", code / 100),
                        }
                    } else if upper.starts_with("DATA") {
                        let _ = w.write_all(b"354 go\r\n").await;
                        let mut data = Vec::new();
                        loop {
                            let mut l = Vec::new();
                            if r.read_until(b'\n', &mut l).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if l == b".\r\n" {
                                break;
                            }
                            let l = if l.starts_with(b"..") { l[1..].to_vec() } else { l };
                            data.extend_from_slice(&l);
                        }
                        inbox.lock().unwrap().push((from.clone(), to.clone(), data));
                        "250 queued\r\n".into()
                    } else if upper.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        "250 ok\r\n".into()
                    };
                    if w.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, inbox)
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
