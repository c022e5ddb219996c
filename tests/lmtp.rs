//! The LMTP listener end to end: `rebound serve` runs as a real process on 127.0.0.1, clients talk to it
//! over TCP (a small Rust client and Python's smtplib.LMTP), and the results are read back from SQLite
//! (and Postgres when REBOUND_TEST_POSTGRES_URL is set).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Client, Server, count_messages, dot_stuff, fixtures, sample_message, scalar, sqlite_url};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap()
}

#[test]
fn stores_a_dsn_once_and_answers_once_per_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let server = Server::start(dir.path(), &url, "");
    let mut client = Client::ready(server.addr);
    let replies = client.deliver("", &["bounces@example.com", "archive@example.com"], &fixture("dsn-userunknown.eml"));
    assert_eq!(replies.len(), 2);
    for (reply, rcpt) in replies.iter().zip(["bounces@example.com", "archive@example.com"]) {
        assert_eq!(reply.code, 250, "{reply:?}");
        assert!(reply.text().starts_with(&format!("2.0.0 <{rcpt}> Ok: stored as message")), "{reply:?}");
    }
    assert_eq!(client.command("QUIT").code, 221);
    assert_eq!(count_messages(&url), 1);
    assert_eq!(scalar(&url, "SELECT COUNT(*) FROM messages WHERE kind = 'dsn' AND source = 'lmtp'"), 1);
    assert_eq!(scalar(&url, "SELECT COUNT(*) FROM bounces"), 1, "one bounced recipient in the DSN");
}

#[test]
fn pipelined_transactions_get_their_replies_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let server = Server::start(dir.path(), &url, "");
    let (mut client, greeting) = Client::connect(server.addr);
    assert_eq!(greeting.code, 220);
    // Everything up to the first DATA in one write, as a PIPELINING client does (RFC 2920).
    client.send(b"LHLO test.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<x@example.com>\r\nRCPT TO:<y@example.com>\r\nDATA\r\n");
    let lhlo = client.read_reply().unwrap();
    assert_eq!(lhlo.code, 250);
    for capability in ["PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SIZE 10485760"] {
        assert!(lhlo.lines.iter().any(|l| l == capability), "{capability} missing in {lhlo:?}");
    }
    let codes: Vec<u16> = (0..4).map(|_| client.read_reply().unwrap().code).collect();
    assert_eq!(codes, [250, 250, 250, 354]);
    // The message, a second whole transaction and a RSET-ed one, in one write.
    let mut burst = dot_stuff(&sample_message(1));
    burst.extend_from_slice(b"MAIL FROM:<>\r\nRCPT TO:<z@example.com>\r\nDATA\r\n");
    burst.extend_from_slice(&dot_stuff(&sample_message(2)));
    burst.extend_from_slice(b"MAIL FROM:<b@example.com>\r\nRSET\r\nNOOP\r\nQUIT\r\n");
    client.send(&burst);
    let codes: Vec<u16> = std::iter::from_fn(|| client.read_reply().map(|r| r.code)).collect();
    assert_eq!(codes, [250, 250, 250, 250, 354, 250, 250, 250, 250, 221]);
    assert_eq!(count_messages(&url), 2);
}

#[test]
fn message_over_the_size_limit_gets_552_after_its_data_and_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let server = Server::start(dir.path(), &url, "max_message_size = 2048");
    let mut client = Client::ready(server.addr);
    // Declared too big: refused at MAIL.
    let mail = client.command("MAIL FROM:<a@example.com> SIZE=999999");
    assert_eq!((mail.code, mail.text().starts_with("5.3.4")), (552, true), "{mail:?}");
    // Not declared: the data is read to its end, then one 552 per recipient, and the session goes on.
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..200 {
        big.extend_from_slice(&[b'x'; 78]);
        big.extend_from_slice(b"\r\n");
    }
    let replies = client.deliver("a@example.com", &["x@example.com", "y@example.com"], &big);
    for reply in &replies {
        assert_eq!(reply.code, 552, "{reply:?}");
        assert!(reply.text().starts_with("5.3.4 "), "{reply:?}");
    }
    assert_eq!(client.command("NOOP").code, 250);
    let small = client.deliver("a@example.com", &["x@example.com"], &sample_message(7));
    assert_eq!(small[0].code, 250, "{small:?}");
    assert_eq!(count_messages(&url), 1, "only the small message is stored");
}

#[test]
fn empty_message_and_binary_garbage_are_stored_as_unparsed() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let server = Server::start(dir.path(), &url, "");
    let mut client = Client::ready(server.addr);
    assert_eq!(client.command("MAIL FROM:<>").code, 250);
    assert_eq!(client.command("RCPT TO:<bounces@example.com>").code, 250);
    assert_eq!(client.command("DATA").code, 354);
    client.send(b".\r\n");
    assert_eq!(client.read_reply().unwrap().code, 250);
    let garbage = fixture("binary-garbage.bin");
    let replies = client.deliver("", &["bounces@example.com"], &garbage);
    assert_eq!(replies[0].code, 250, "{replies:?}");
    assert_eq!(scalar(&url, "SELECT COUNT(*) FROM messages WHERE kind = 'unparsed'"), 2);
    // Dot-stuffing is undone byte for byte (the client ended the data with the CRLF it had to add).
    let mut expected = garbage.clone();
    expected.extend_from_slice(b"\r\n");
    let stored = common::block_on(async {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let raw: Vec<u8> = sqlx::query_scalar("SELECT raw FROM messages WHERE length(raw) > 0").fetch_one(&pool).await.unwrap();
        raw
    });
    assert_eq!(stored, expected);
}

#[test]
fn duplicate_is_acknowledged_without_a_second_row() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let server = Server::start(dir.path(), &url, "");
    let mut client = Client::ready(server.addr);
    let first = client.deliver("", &["b@example.com"], &fixture("qmail-mailboxfull.eml"));
    let second = client.deliver("", &["b@example.com"], &fixture("qmail-mailboxfull.eml"));
    assert_eq!((first[0].code, second[0].code), (250, 250));
    assert!(second[0].text().contains("already stored"), "{second:?}");
    assert_eq!(count_messages(&url), 1);
}

#[test]
fn protocol_errors_are_answered_and_too_many_close_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let server = Server::start(dir.path(), &url, "");
    let (mut client, _) = Client::connect(server.addr);
    assert_eq!(client.command("EHLO smtp.example").code, 500, "LMTP wants LHLO");
    assert_eq!(client.command("MAIL FROM:<a@example.com>").code, 503, "MAIL before LHLO");
    assert_eq!(client.command("LHLO test.example").code, 250);
    assert_eq!(client.command("RCPT TO:<x@example.com>").code, 503, "RCPT before MAIL");
    assert_eq!(client.command("DATA").code, 503, "DATA before RCPT");
    assert_eq!(client.command("MAIL FROM:<a@example.com>").code, 250);
    assert_eq!(client.command("MAIL FROM:<a@example.com>").code, 503, "nested MAIL");
    assert_eq!(client.command("DATA").code, 503, "no recipient yet (RFC 2033 §4.2)");
    let long = format!("RCPT TO:<{}@example.com>", "a".repeat(5000));
    let reply = client.command(&long);
    assert_eq!((reply.code, reply.text().as_str()), (500, "5.5.2 Line too long"));
    assert_eq!(client.command("RCPT TO:<x@example.com>").code, 250, "the session survives a long line");
    client.send(b"\x00\x01\x02\xff\xfe garbage\r\n");
    assert_eq!(client.read_reply().unwrap().code, 500);
    // Eight errors so far; the tenth closes the connection.
    assert_eq!(client.command("BOGUS").code, 500);
    let last = client.command("BOGUS");
    assert_eq!(last.code, 421, "{last:?}");
    assert!(client.closed());
    assert_eq!(count_messages(&url), 0);
}

#[test]
fn too_many_connections_get_421() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &sqlite_url(dir.path()), "max_connections = 2");
    let _a = Client::ready(server.addr);
    let _b = Client::ready(server.addr);
    let (_, refused) = Client::connect(server.addr);
    assert_eq!(refused.code, 421, "{refused:?}");
    assert!(refused.text().starts_with("4.3.2"), "{refused:?}");
}

#[test]
fn too_many_recipients_get_452() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &sqlite_url(dir.path()), "max_recipients = 2");
    let mut client = Client::ready(server.addr);
    assert_eq!(client.command("MAIL FROM:<>").code, 250);
    assert_eq!(client.command("RCPT TO:<a@example.com>").code, 250);
    assert_eq!(client.command("RCPT TO:<b@example.com>").code, 250);
    assert_eq!(client.command("RCPT TO:<c@example.com>").code, 452);
}

#[test]
fn idle_connection_is_closed_with_421() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &sqlite_url(dir.path()), "idle_timeout = \"1s\"");
    let (mut client, _) = Client::connect(server.addr);
    let started = Instant::now();
    let reply = client.read_reply().expect("a 421 before the close");
    assert_eq!(reply.code, 421, "{reply:?}");
    assert!(reply.text().starts_with("4.4.2"), "{reply:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(client.closed());
}

#[test]
fn non_loopback_listen_address_logs_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let config = dir.path().join("open.toml");
    std::fs::write(&config, format!("[database]\nurl = \"{url}\"\n[ingest.lmtp]\nlisten = \"0.0.0.0:0\"\n")).unwrap();
    let mut child = Command::new(common::bin())
        .args(["serve", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.contains("LMTP listening on");
        seen.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.iter().any(|l| l.contains("WARN") && l.contains("non-loopback")), "{seen:#?}");
}

/// Python's smtplib.LMTP (a client we did not write) delivers a message.
#[test]
fn python_smtplib_lmtp_client_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let server = Server::start(dir.path(), &url, "");
    let script = r#"
import smtplib, sys
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(path, 'rb') as f:
    msg = f.read()
lmtp = smtplib.LMTP(host, port)
code, _ = lmtp.ehlo_or_helo_if_needed() or (0, b'')
refused = lmtp.sendmail('', ['bounces@example.com'], msg)
print('refused', refused)
lmtp.quit()
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(server.addr.ip().to_string())
        .arg(server.addr.port().to_string())
        .arg(fixtures().join("arf-auth-failure.eml"))
        .output()
        .expect("python3 is needed for this test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("refused {}"), "{stdout}");
    assert_eq!(scalar(&url, "SELECT COUNT(*) FROM messages WHERE kind = 'arf'"), 1);
}

#[test]
fn eight_concurrent_clients_all_get_committed() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let server = Server::start(dir.path(), &url, "");
    let addr = server.addr;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut client = Client::ready(addr);
                for i in 0..40 {
                    let r = client.deliver("", &["b@example.com"], &sample_message(t * 1000 + i));
                    assert_eq!(r[0].code, 250, "{r:?}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(count_messages(&url), 320);
}

/// A locked database (another writer holds it): 451, nothing stored; once it is free the retry is stored.
#[test]
fn locked_database_gives_451_and_the_retry_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let server = Server::start(dir.path(), &url, "");
    let db = dir.path().join("rebound.db");
    let mut client = Client::ready(server.addr);
    let lock = Command::new("sqlite3")
        .arg(&db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn();
    let Ok(mut lock) = lock else {
        eprintln!("skipping: the sqlite3 command is not installed");
        return;
    };
    // sqlite3 holds the exclusive lock while it waits for more input on stdin.
    let mut sql = lock.stdin.take().unwrap();
    std::io::Write::write_all(&mut sql, b"BEGIN EXCLUSIVE;\nSELECT 'locked';\n").unwrap();
    let mut out = std::io::BufReader::new(lock.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "locked");
    let replies = client.deliver("", &["b@example.com"], &sample_message(1));
    assert_eq!(replies[0].code, 451, "{replies:?}");
    assert!(replies[0].text().starts_with("4.3.0"), "{replies:?}");
    drop(sql);
    lock.wait().unwrap();
    let retry = client.deliver("", &["b@example.com"], &sample_message(1));
    assert_eq!(retry[0].code, 250, "{retry:?}");
    assert_eq!(count_messages(&url), 1);
}

/// The database files become read-only under a running server: 451 4.3.0, nothing acknowledged; once
/// writable again, the same message is stored.
#[test]
fn read_only_database_gives_451_and_nothing_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let server = Server::start(dir.path(), &url, "");
    let mut client = Client::ready(server.addr);
    assert_eq!(client.deliver("", &["b@example.com"], &sample_message(1))[0].code, 250);
    // chmod does not affect files the server already has open, and root ignores it anyway; the immutable
    // attribute does. The -shm file stays writable (it is memory-mapped).
    let files = vec![dir.path().join("rebound.db"), dir.path().join("rebound.db-wal")];
    let Some(guard) = common::Immutable::set(files) else {
        eprintln!("skipping: chattr +i is not permitted here (needs root on ext4/xfs)");
        return;
    };
    let replies = client.deliver("", &["b@example.com", "c@example.com"], &sample_message(2));
    for reply in &replies {
        assert_eq!(reply.code, 451, "{replies:?}");
        assert!(reply.text().starts_with("4.3.0"), "{reply:?}");
    }
    drop(guard);
    // As an MTA does: retry later. SQLite may need a moment (a connection that saw the I/O error is
    // replaced), so a few attempts are allowed; each one is answered and none is lost.
    let mut attempts = Vec::new();
    for _ in 0..10 {
        let retry = client.deliver("", &["b@example.com"], &sample_message(2));
        attempts.push(retry[0].code);
        if retry[0].code == 250 {
            break;
        }
        assert_eq!(retry[0].code, 451, "{retry:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(attempts.last(), Some(&250), "{attempts:?}\n{}", server.log());
    eprintln!("attempts after the database became writable again: {attempts:?}");
    assert_eq!(count_messages(&url), 2);
}

/// SIGTERM while a message is being received: the listener closes, the message is finished and
/// acknowledged after its commit, idle sessions get 421, and the process exits 0.
#[test]
fn sigterm_finishes_the_message_in_flight_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let mut server = Server::start(dir.path(), &url, "");
    let mut idle = Client::ready(server.addr);
    let mut busy = Client::ready(server.addr);
    assert_eq!(busy.command("MAIL FROM:<>").code, 250);
    assert_eq!(busy.command("RCPT TO:<b@example.com>").code, 250);
    assert_eq!(busy.command("DATA").code, 354);
    let data = dot_stuff(&fixture("dsn-userunknown.eml"));
    let (head, tail) = data.split_at(data.len() / 2);
    busy.send(head);
    server.signal("TERM");
    server.wait_for_log("LMTP listener closed");
    let idle_reply = idle.read_reply().expect("421 to the idle session");
    assert_eq!(idle_reply.code, 421, "{idle_reply:?}");
    assert!(std::net::TcpStream::connect(server.addr).is_err(), "the listener is closed");
    busy.send(tail);
    let reply = busy.read_reply().expect("the message in flight is answered");
    assert_eq!(reply.code, 250, "{reply:?}");
    let status = server.wait(Duration::from_secs(20)).expect("serve did not exit after SIGTERM");
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", server.log());
    assert_eq!(count_messages(&url), 1);
}

/// Regression (previous attempt): a SIGTERM right after start-up killed the process, because the handler
/// was installed after the socket was bound. Now it is a clean exit 0.
#[test]
fn sigterm_right_after_start_is_a_clean_exit() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &sqlite_url(dir.path()), "");
    server.signal("TERM");
    let status = server.wait(Duration::from_secs(20)).expect("serve did not exit after SIGTERM");
    assert_eq!(status.code(), Some(0), "{status:?}");
    let mut server = Server::start(dir.path(), &sqlite_url(dir.path()), "");
    server.signal("INT");
    let status = server.wait(Duration::from_secs(20)).expect("serve did not exit after SIGINT");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// The shutdown grace bounds how long a stalled message may hold the exit; it is never acknowledged.
#[test]
fn stalled_message_is_dropped_unacknowledged_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let mut server = Server::start(dir.path(), &url, "shutdown_grace = \"1s\"");
    let mut busy = Client::ready(server.addr);
    assert_eq!(busy.command("MAIL FROM:<>").code, 250);
    assert_eq!(busy.command("RCPT TO:<b@example.com>").code, 250);
    assert_eq!(busy.command("DATA").code, 354);
    busy.send(b"Subject: never finished\r\n");
    server.signal("TERM");
    let status = server.wait(Duration::from_secs(20)).expect("serve did not exit after the grace");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(busy.read_reply().is_none(), "no reply to a message that was not finished");
    assert_eq!(count_messages(&url), 0);
}

#[test]
fn postgres_stores_messages_and_recognises_duplicates() {
    let Some(schema) = common::postgres_schema("lmtp_pg") else { return };
    let url = schema.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &url, "");
    let mut client = Client::ready(server.addr);
    let replies = client.deliver("", &["a@example.com", "b@example.com"], &fixture("dsn-userunknown.eml"));
    assert!(replies.iter().all(|r| r.code == 250), "{replies:?}");
    let again = client.deliver("", &["a@example.com"], &fixture("dsn-userunknown.eml"));
    assert!(again[0].text().contains("already stored"), "{again:?}");
    let garbage = client.deliver("", &["a@example.com"], &fixture("binary-garbage.bin"));
    assert_eq!(garbage[0].code, 250, "{garbage:?}");
    assert_eq!(count_messages(&url), 2);
    assert_eq!(scalar(&url, "SELECT COUNT(*) FROM bounces"), 1);
}

#[test]
fn address_in_use_exits_75_naming_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let config = dir.path().join("taken.toml");
    let url = sqlite_url(dir.path());
    std::fs::write(&config, format!("[database]\nurl = \"{url}\"\n[ingest.lmtp]\nlisten = \"{addr}\"\n")).unwrap();
    let out = Command::new(common::bin()).args(["serve", "--config"]).arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(stderr.contains(&format!("cannot listen for LMTP on {addr}")), "{stderr}");
}

/// With an `[spf]` section, `serve` runs the SPF policy server beside LMTP and stops both on SIGTERM.
#[test]
fn serve_runs_the_spf_policy_server_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let mut server = Server::start_with(dir.path(), &url, "", "shutdown_grace = \"3s\"\n[spf]\nlisten = \"127.0.0.1:0\"");
    server.wait_for_log("spf policy server listening on ");
    let log = server.log();
    let at = log.find("spf policy server listening on ").unwrap() + "spf policy server listening on ".len();
    let addr: std::net::SocketAddr = log[at..].split_whitespace().next().unwrap().parse().unwrap();
    let mut policy = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(
        &mut policy,
        b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=127.0.0.1\nhelo_name=localhost\nsender=a@example.com\n\n",
    )
    .unwrap();
    let mut answer = String::new();
    let mut reader = std::io::BufReader::new(policy);
    std::io::BufRead::read_line(&mut reader, &mut answer).unwrap();
    assert!(answer.starts_with("action="), "{answer:?}");
    let mut client = Client::ready(server.addr);
    assert_eq!(client.deliver("", &["b@example.com"], &sample_message(1))[0].code, 250);
    server.signal("TERM");
    let status = server.wait(Duration::from_secs(20)).expect("serve did not stop");
    assert_eq!(status.code(), Some(0), "{}", server.log());
    drop(reader);
}
