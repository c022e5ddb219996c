//! Security review (issue 4), against `rebound serve` as a real process on 127.0.0.1:
//! - `allow_networks` of LMTP and of the SPF policy server: a client outside the list is refused (LMTP
//!   421 4.7.1, policy `defer_if_permit`) with a log line naming it, one inside is served (the client
//!   side binds 127.0.0.2 to be "another host" on the loopback network);
//! - a DKIM key file its group or others may read is reported at start, naming the file and its mode;
//! - a database password never appears in the log or the error, whichever way the URL carries it.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Client, Server, block_on, sample_message, sqlite_url};

/// A TCP connection to `to` from the local address `from` (any port).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0)).unwrap();
    let stream = block_on(socket.connect(to)).unwrap().into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

/// Everything the server sends until it closes the connection.
fn read_all(mut stream: TcpStream) -> String {
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    out
}

const LOG: &str = "warn,rebound::serve=info,rebound::spf::server=info";

#[test]
fn lmtp_refuses_clients_outside_allow_networks_and_serves_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let server = Server::launch(dir.path(), &url, "", "allow_networks = [\"127.0.0.1/32\", \"::1\"]", LOG);
    let refused = read_all(connect_from("127.0.0.2", server.addr));
    assert!(refused.starts_with("421 4.7.1 "), "{refused:?}");
    let line = server.logged_line("outside allow_networks refused", Duration::from_secs(10));
    assert!(line.is_some_and(|l| l.contains("127.0.0.2")), "a warning naming the client: {}", server.log());
    let mut client = Client::ready(server.addr);
    assert_eq!(client.deliver("", &["b@example.com"], &sample_message(1))[0].code, 250);
    assert_eq!(common::count_messages(&url), 1);
}

/// One policy request; the answer's action line.
fn policy_request(mut stream: TcpStream) -> String {
    stream
        .write_all(b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=127.0.0.9\nhelo_name=h.test\nsender=a@example.com\ninstance=i1\n\n")
        .unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line
}

#[test]
fn policy_server_refuses_clients_outside_allow_networks_and_serves_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let config = format!(
        "[database]\nurl = \"{url}\"\n[ingest.lmtp]\nlisten = \"127.0.0.1:0\"\n\
         [spf]\nlisten = \"127.0.0.1:0\"\nallow_networks = [\"127.0.0.1\"]\n"
    );
    let server = Server::with_config(dir.path(), &config, LOG);
    let policy = server.logged_addr("spf policy server listening on ", Duration::from_secs(10)).expect("policy address");
    let refused = policy_request(connect_from("127.0.0.2", policy));
    assert!(refused.starts_with("action=defer_if_permit "), "{refused:?}");
    let line = server.logged_line("outside allow_networks, refused", Duration::from_secs(10));
    assert!(line.is_some_and(|l| l.contains("127.0.0.2")), "a warning naming the client: {}", server.log());
    // 127.0.0.9 is in the default trusted_networks: DUNNO without a DNS look-up.
    assert_eq!(policy_request(connect_from("127.0.0.1", policy)), "action=DUNNO\n");
}

#[test]
fn a_bad_allow_networks_entry_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rebound.toml");
    std::fs::write(&config, "[spf]\nlisten = \"127.0.0.1:0\"\nallow_networks = [\"10.0.0.0/40\"]\n").unwrap();
    let out = Command::new(common::bin()).args(["serve", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("allow_networks") && stderr.contains("10.0.0.0/40"), "{stderr}");
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dkim").join(name)
}

#[test]
fn a_dkim_key_readable_by_others_is_reported_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("report.pem");
    std::fs::copy(fixture("ed25519.pem"), &key).unwrap();
    let url = sqlite_url(dir.path());
    let config = format!(
        "[database]\nurl = \"{url}\"\n[ingest.lmtp]\nlisten = \"127.0.0.1:0\"\n[spf]\nlisten = \"127.0.0.1:0\"\n\
         [report.spf]\nenabled = true\nfrom_address = \"reports@ours.example\"\nsign = [\"main\"]\n\
         [dkim.main]\ndomain = \"ours.example\"\nselector = \"ed\"\nkey = \"{}\"\nalgorithm = \"ed25519-sha256\"\n\
         [smtp]\nrelay = \"127.0.0.1:1\"\n",
        key.display()
    );
    for (mode, warned) in [(0o644, true), (0o600, false)] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let server = Server::with_config(dir.path(), &config, LOG);
        let log = server.log();
        let warning = log.lines().find(|l| l.contains("is readable by its group or other users"));
        assert_eq!(warning.is_some(), warned, "mode {mode:o}: {log}");
        if let Some(w) = warning {
            assert!(w.contains(&key.display().to_string()) && w.contains("0644"), "{w}");
        }
    }
}

#[test]
fn database_passwords_never_reach_the_log_or_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rebound.toml");
    // Port 1 on 127.0.0.1: nothing listens, so the start fails and reports the URL.
    for url in [
        "postgres://rebound:S3cretPw0rd@127.0.0.1:1/rebound",
        "postgres://127.0.0.1:1/rebound?user=rebound&password=S3cretPw0rd",
    ] {
        std::fs::write(&config, format!("[database]\nurl = \"{url}\"\n[ingest.lmtp]\nlisten = \"127.0.0.1:0\"\n")).unwrap();
        let out = Command::new(common::bin())
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "debug")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("127.0.0.1:1"), "the error names the database: {text}");
        assert!(!text.contains("S3cretPw0rd"), "the password leaked: {text}");
        // The same through `rebound ingest` (exit 75) and `rebound db migrate`.
        for args in [vec!["ingest", "--db", url, "-"], vec!["db", "migrate", "--db", url]] {
            let out = Command::new(common::bin()).args(&args).env("RUST_LOG", "debug").output().unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(!out.status.success(), "{args:?}");
            assert!(!text.contains("S3cretPw0rd"), "{args:?}: the password leaked: {text}");
        }
    }
}
