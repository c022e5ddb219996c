//! rebound's SPF policy server behind a real Postfix (issue 5). The test runs a private Postfix instance
//! (its own config and queue directories in a temporary directory, listening only on 127.0.0.1 free ports,
//! no system instance touched) whose smtpd asks `rebound serve` with `check_policy_service`, as
//! docs/postfix.md tells operators to. Mail is sent with swaks from 127.0.0.1, which example.com's SPF
//! record (served by a DNS server of the test) does not allow:
//! - through the smtpd wired to a `relaxed` rebound, the message is relayed to an SMTP sink of the test
//!   carrying the PREPENDed `Received-SPF: fail` and `Authentication-Results: ...; spf=fail` headers;
//! - through the smtpd wired to a `strict` rebound, RCPT is rejected with `550 5.7.23`.
//!
//! It skips, saying why, without /usr/sbin/postfix or /usr/bin/swaks, or when not run as root (Postfix's
//! master must start as root; it then runs its daemons as the `postfix` user).

mod common;
mod spf_support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Server, scalar};
use spf_support::{smtp_sink, txt};

const POSTFIX: &str = "/usr/sbin/postfix";
const SWAKS: &str = "/usr/bin/swaks";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A private Postfix instance; stopped when dropped.
struct Postfix {
    dir: PathBuf,
}

impl Postfix {
    /// Writes main.cf and master.cf into `dir` and starts the instance: one smtpd on `relaxed_port`
    /// asking the policy server at `relaxed`, one on `strict_port` asking `strict`, relaying ours.example
    /// to `sink`.
    fn start(dir: &Path, relaxed_port: u16, relaxed: SocketAddr, strict_port: u16, strict: SocketAddr, sink: SocketAddr) -> Postfix {
        for sub in ["queue", "data"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        // The daemons run as `postfix`: they must reach the queue through the temporary directory.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let chown = Command::new("chown").arg("postfix").arg(dir.join("data")).status().unwrap();
        assert!(chown.success(), "chown postfix data directory");
        let d = dir.display();
        let main = format!(
            "compatibility_level = 3.6\nqueue_directory = {d}/queue\ndata_directory = {d}/data\n\
             mail_owner = postfix\nsetgid_group = postdrop\ninet_interfaces = 127.0.0.1\ninet_protocols = ipv4\n\
             myhostname = mx.ours.example\nmydomain = ours.example\nmydestination =\nmynetworks = 127.0.0.0/8\n\
             relay_domains = ours.example\nrelayhost = [127.0.0.1]:{sink_port}\n\
             smtp_dns_support_level = disabled\nalias_maps =\nalias_database =\nlocal_recipient_maps =\nbiff = no\n\
             maillog_file = {d}/maillog\nmaillog_file_prefixes = {d}\n\
             relaxed_recipient = reject_unauth_destination, check_policy_service {{ inet:{relaxed}, default_action=DUNNO }}\n\
             relaxed_data = check_policy_service {{ inet:{relaxed}, default_action=DUNNO }}\n\
             strict_recipient = reject_unauth_destination, check_policy_service {{ inet:{strict}, default_action=DUNNO }}\n\
             strict_data = check_policy_service {{ inet:{strict}, default_action=DUNNO }}\n",
            sink_port = sink.port()
        );
        std::fs::write(dir.join("main.cf"), main).unwrap();
        // As docs/postfix.md: the policy service in smtpd_recipient_restrictions (Received-SPF, or the
        // rejection) and in smtpd_data_restrictions (Authentication-Results).
        let smtpd = |port: u16, mode: &str| {
            format!(
                "127.0.0.1:{port} inet n - n - - smtpd\n  -o smtpd_recipient_restrictions=${mode}_recipient\n  \
                 -o smtpd_data_restrictions=${mode}_data\n"
            )
        };
        let mut master = smtpd(relaxed_port, "relaxed") + &smtpd(strict_port, "strict");
        for line in [
            "pickup unix n - n 60 1 pickup",
            "cleanup unix n - n - 0 cleanup",
            "qmgr unix n - n 300 1 qmgr",
            "rewrite unix - - n - - trivial-rewrite",
            "bounce unix - - n - 0 bounce",
            "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce",
            "verify unix - - n - 1 verify",
            "flush unix n - n 1000? 0 flush",
            "proxymap unix - - n - - proxymap",
            "proxywrite unix - - n - 1 proxymap",
            "smtp unix - - n - - smtp",
            "relay unix - - n - - smtp",
            "showq unix n - n - - showq",
            "error unix - - n - - error",
            "retry unix - - n - - error",
            "discard unix - - n - - discard",
            "anvil unix - - n - 1 anvil",
            "scache unix - - n - 1 scache",
            "postlog unix-dgram n - n - 1 postlogd",
        ] {
            master.push_str(line);
            master.push('\n');
        }
        std::fs::write(dir.join("master.cf"), master).unwrap();
        let out = Command::new(POSTFIX).arg("-c").arg(dir).arg("start").output().unwrap();
        let postfix = Postfix { dir: dir.to_path_buf() };
        assert!(out.status.success(), "postfix start failed: {}\n{}", String::from_utf8_lossy(&out.stderr), postfix.log());
        postfix
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new(POSTFIX).arg("-c").arg(&self.dir).arg("stop").output();
    }
}

/// Sends one message with swaks through 127.0.0.1:`port`; swaks' exit status and transcript.
fn swaks(port: u16, subject: &str) -> (bool, String) {
    let out = Command::new(SWAKS)
        .args(["--server", "127.0.0.1", "--port", &port.to_string(), "--helo", "mx.sender.test"])
        .args(["--from", "ceo@example.com", "--to", "victim@ours.example", "--header", &format!("Subject: {subject}")])
        .args(["--timeout", "30"])
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

fn rebound(dir: &Path, db: &str, dns: &str, mode: &str) -> (Server, SocketAddr) {
    let text = format!(
        "[database]\nurl = \"{db}\"\n[ingest.lmtp]\nlisten = \"127.0.0.1:0\"\n\
         [spf]\nlisten = \"127.0.0.1:0\"\ndns = [\"{dns}\"]\nauth_serv_id = \"mx.ours.example\"\n\
         helo = \"{mode}\"\nmail_from = \"{mode}\"\ntrusted_networks = []\n"
    );
    let server = Server::with_config(dir, &text, "rebound=info");
    let addr = server.logged_addr("spf policy server listening on ", Duration::from_secs(30)).expect("policy server");
    (server, addr)
}

#[test]
fn postfix_prepends_in_relaxed_mode_and_rejects_in_strict_mode() {
    for tool in [POSTFIX, SWAKS] {
        if !Path::new(tool).exists() {
            println!("SKIPPED postfix test: {tool} is absent (apt-get install postfix swaks)");
            return;
        }
    }
    let uid = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        println!("SKIPPED postfix test: Postfix's master must be started as root");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dns = rt.block_on(spf_support::start(&[("example.com", txt("v=spf1 ip4:192.0.2.0/24 -all"))]));
    let sink = rt.block_on(smtp_sink(Arc::default(), Duration::ZERO));
    let tmp = tempfile::tempdir().unwrap();
    let (relaxed_dir, strict_dir, postfix_dir) = (tmp.path().join("relaxed"), tmp.path().join("strict"), tmp.path().join("postfix"));
    for d in [&relaxed_dir, &strict_dir, &postfix_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    let relaxed_db = common::sqlite_url(&relaxed_dir);
    let (_relaxed, relaxed) = rebound(&relaxed_dir, &relaxed_db, &dns.spec(), "relaxed");
    let (_strict, strict) = rebound(&strict_dir, &common::sqlite_url(&strict_dir), &dns.spec(), "strict");
    let (relaxed_port, strict_port) = (free_port(), free_port());
    let postfix = Postfix::start(&postfix_dir, relaxed_port, relaxed, strict_port, strict, sink.addr);

    // Relaxed: accepted, relayed to the sink with both headers.
    let waited = Instant::now();
    let (ok, transcript) = loop {
        let (ok, transcript) = swaks(relaxed_port, "relaxed");
        // The smtpd listener is up a moment after `postfix start` returns.
        if ok || !transcript.contains("Connection refused") || waited.elapsed() > Duration::from_secs(20) {
            break (ok, transcript);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(ok, "relaxed: swaks failed:\n{transcript}\n{}", postfix.log());
    let waited = Instant::now();
    while sink.inbox.lock().unwrap().is_empty() {
        assert!(waited.elapsed() < Duration::from_secs(30), "nothing relayed to the sink:\n{}", postfix.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (from, to, data) = sink.inbox.lock().unwrap()[0].clone();
    // Header fields unfolded, in case a relay folded them.
    let message = String::from_utf8_lossy(&data).replace("\r\n ", " ").replace("\r\n\t", " ");
    assert_eq!((from.as_str(), to.as_str()), ("<ceo@example.com>", "<victim@ours.example>"));
    assert!(message.contains("Received-SPF: fail (mx.ours.example: domain of ceo@example.com does not designate 127.0.0.1"), "{message}");
    assert!(message.contains("Authentication-Results: mx.ours.example;"), "{message}");
    assert!(message.contains("spf=fail smtp.mailfrom=ceo@example.com"), "{message}");
    assert!(message.contains("Subject: relaxed"), "{message}");

    // Strict: RCPT refused with the RFC 7372 code.
    let (ok, transcript) = swaks(strict_port, "strict");
    assert!(!ok, "strict: swaks should fail:\n{transcript}");
    assert!(transcript.contains("<** 550 5.7.23"), "strict: no 550 5.7.23 in:\n{transcript}");
    assert_eq!(sink.inbox.lock().unwrap().len(), 1, "the rejected message is not relayed");

    // Every check Postfix asked for is recorded.
    assert!(scalar(&relaxed_db, "SELECT COUNT(*) FROM spf_checks WHERE identity = 'mail_from' AND result = 'fail'") >= 1);
    drop(postfix);
}
