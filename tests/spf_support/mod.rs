//! A real DNS server for the SPF tests: UDP and TCP on 127.0.0.1, answering from a zone given in the
//! test (TXT, A, AAAA, MX, PTR; NXDOMAIN for names outside it; no answer at all for `Rec::Timeout`
//! names, like the RFC 7208 suite's TIMEOUT). Built on hickory-proto's message codec.
#![allow(dead_code)]

pub mod smtp;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, MX, PTR, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// One record of a test zone.
#[derive(Debug, Clone)]
pub enum Rec {
    /// A TXT record of one string (split in 255-octet pieces).
    Txt(String),
    /// A TXT record given as its strings.
    TxtParts(Vec<Vec<u8>>),
    /// An A record.
    A(&'static str),
    /// An AAAA record.
    Aaaa(&'static str),
    /// An MX record.
    Mx(u16, &'static str),
    /// A PTR record.
    Ptr(&'static str),
    /// Queries at this name for types it has no record of get no answer.
    Timeout,
}

/// A TXT record.
pub fn txt(s: &str) -> Rec {
    Rec::Txt(s.to_string())
}

/// A running server; stops when dropped.
pub struct DnsServer {
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl DnsServer {
    /// Queries answered or ignored so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }

    /// `127.0.0.1:PORT`, as `--dns` takes it.
    pub fn spec(&self) -> String {
        self.addr.to_string()
    }
}

type Zone = Arc<HashMap<String, Vec<Rec>>>;

fn name_of(s: &str) -> Name {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() {
        return Name::root();
    }
    Name::from_labels(s.split('.').map(str::as_bytes)).expect("test zone name")
}

fn key_of(name: &Name) -> String {
    name.iter().map(|l| String::from_utf8_lossy(l).to_ascii_lowercase()).collect::<Vec<_>>().join(".")
}

/// A UDP socket and a TCP listener on the same free port: the UDP port the system picks may be taken for
/// TCP by another test, so try a few ports.
async fn bind_udp_and_tcp() -> (UdpSocket, TcpListener, std::net::SocketAddr) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let addr = udp.local_addr().expect("udp addr");
        if let Ok(tcp) = TcpListener::bind(addr).await {
            return (udp, tcp, addr);
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1 after 50 tries");
}

/// Starts a server for `zone`.
pub async fn start(zone: &[(&str, Rec)]) -> DnsServer {
    let mut map: HashMap<String, Vec<Rec>> = HashMap::new();
    for (name, rec) in zone {
        map.entry(name.to_ascii_lowercase().trim_end_matches('.').to_string()).or_default().push(rec.clone());
    }
    let zone: Zone = Arc::new(map);
    let (udp, tcp, addr) = bind_udp_and_tcp().await;
    let queries = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    {
        let zone = zone.clone();
        let queries = queries.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else { return };
                queries.fetch_add(1, Ordering::SeqCst);
                if let Some(reply) = answer(&zone, &buf[..n]) {
                    let reply = if reply.len() > 512 { truncated(&buf[..n]) } else { Some(reply) };
                    if let Some(reply) = reply {
                        let _ = udp.send_to(&reply, peer).await;
                    }
                }
            }
        }));
    }
    {
        let zone = zone.clone();
        let queries = queries.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = tcp.accept().await else { return };
                let zone = zone.clone();
                let queries = queries.clone();
                tokio::spawn(async move {
                    loop {
                        let mut len = [0u8; 2];
                        if conn.read_exact(&mut len).await.is_err() {
                            return;
                        }
                        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        if conn.read_exact(&mut msg).await.is_err() {
                            return;
                        }
                        queries.fetch_add(1, Ordering::SeqCst);
                        let Some(reply) = answer(&zone, &msg) else { return };
                        let mut out = (reply.len() as u16).to_be_bytes().to_vec();
                        out.extend_from_slice(&reply);
                        if conn.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }));
    }
    DnsServer { addr, queries, tasks }
}

fn truncated(request: &[u8]) -> Option<Vec<u8>> {
    let req = Message::from_vec(request).ok()?;
    let mut reply = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
    reply.metadata.truncation = true;
    reply.metadata.recursion_desired = req.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_queries(req.queries.clone());
    reply.to_vec().ok()
}

fn answer(zone: &Zone, request: &[u8]) -> Option<Vec<u8>> {
    let req = Message::from_vec(request).ok()?;
    let q = req.queries.first()?.clone();
    let mut reply = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
    reply.metadata.recursion_desired = req.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = true;
    reply.add_query(q.clone());
    let key = key_of(q.name());
    let Some(records) = zone.get(&key) else {
        reply.metadata.response_code = ResponseCode::NXDomain;
        return reply.to_vec().ok();
    };
    let qtype = q.query_type();
    let mut found = false;
    for rec in records {
        let rdata = match (rec, qtype) {
            (Rec::Txt(s), RecordType::TXT) => {
                let b = s.as_bytes();
                let parts: Vec<&[u8]> = if b.is_empty() { vec![b] } else { b.chunks(255).collect() };
                RData::TXT(TXT::from_bytes(parts))
            }
            (Rec::TxtParts(p), RecordType::TXT) => RData::TXT(TXT::from_bytes(p.iter().map(Vec::as_slice).collect())),
            (Rec::A(ip), RecordType::A) => RData::A(A(ip.parse().expect("A"))),
            (Rec::Aaaa(ip), RecordType::AAAA) => RData::AAAA(AAAA(ip.parse().expect("AAAA"))),
            (Rec::Mx(pref, host), RecordType::MX) => RData::MX(MX::new(*pref, name_of(host))),
            (Rec::Ptr(host), RecordType::PTR) => RData::PTR(PTR(name_of(host))),
            _ => continue,
        };
        found = true;
        reply.add_answer(Record::from_rdata(q.name().clone(), 60, rdata));
    }
    if !found && records.iter().any(|r| matches!(r, Rec::Timeout)) {
        return None;
    }
    reply.to_vec().ok()
}

/// The reverse name of an address, as a zone key.
pub fn rev(ip: &str) -> String {
    match ip.parse::<IpAddr>().expect("ip") {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::new();
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s + "ip6.arpa"
        }
    }
}

/// What an SMTP sink received: (MAIL FROM, RCPT TO, DATA), in order of acceptance.
pub type Inbox = Arc<std::sync::Mutex<Vec<(String, String, Vec<u8>)>>>;

/// A small SMTP server on 127.0.0.1 standing for the relay reports go through; stops when dropped.
pub struct SmtpSink {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Messages accepted (answered 250 after the final dot).
    pub inbox: Inbox,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a sink that answers RCPT with the next code of `rcpt_codes` (250 when empty) and waits
/// `greeting_delay` before its 220 greeting (as a tarpitting relay does).
pub async fn smtp_sink(rcpt_codes: Arc<std::sync::Mutex<std::collections::VecDeque<u16>>>, greeting_delay: std::time::Duration) -> SmtpSink {
    smtp_relay(queue_answer(rcpt_codes), greeting_delay, Arc::default()).await
}

/// Starts a sink that answers `RCPT TO:<address>` with the code `codes` gives the address (250 when none).
pub async fn smtp_sink_by_recipient(codes: std::collections::HashMap<String, u16>) -> SmtpSink {
    let answer = move |rcpt: &str| codes.get(rcpt.trim().trim_start_matches('<').trim_end_matches('>')).copied().unwrap_or(250);
    smtp_relay(Arc::new(answer), std::time::Duration::ZERO, Arc::default()).await
}

/// The RCPT reply code for a `RCPT TO:` argument.
pub type Answer = Arc<dyn Fn(&str) -> u16 + Send + Sync>;

/// Answers every RCPT with the next code of `rcpt_codes` (250 when empty).
pub fn queue_answer(rcpt_codes: Arc<std::sync::Mutex<std::collections::VecDeque<u16>>>) -> Answer {
    Arc::new(move |_: &str| rcpt_codes.lock().unwrap().pop_front().unwrap_or(250))
}

/// How a relay misbehaves on a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// It does not: a working sink.
    #[default]
    None,
    /// `421 4.3.2` at the greeting, then closes.
    Busy,
    /// `554 5.3.2` at the greeting (no service for this client), then closes.
    NoService,
    /// Accepts the connection and never says anything.
    Hang,
    /// Takes about 200 bytes of the data after 354, then closes the connection.
    DropInData,
}

/// Like [`smtp_sink`], misbehaving as `fault` says (read at each new connection, so a test can switch it).
pub async fn smtp_relay(
    answer: Answer,
    greeting_delay: std::time::Duration,
    fault: Arc<std::sync::Mutex<Fault>>,
) -> SmtpSink {
    use tokio::io::AsyncBufReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the SMTP sink");
    let addr = listener.local_addr().expect("sink addr");
    let inbox: Inbox = Arc::default();
    let connections = Arc::new(AtomicUsize::new(0));
    let (inbox2, connections2) = (inbox.clone(), connections.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else { return };
            connections2.fetch_add(1, Ordering::SeqCst);
            let inbox = inbox2.clone();
            let answer = answer.clone();
            let fault = *fault.lock().unwrap();
            tokio::spawn(async move {
                tokio::time::sleep(greeting_delay).await;
                let (r, mut w) = conn.into_split();
                let mut r = tokio::io::BufReader::new(r);
                let greeting: &[u8] = match fault {
                    Fault::Busy => b"421 4.3.2 sink.test busy, try again later\r\n",
                    Fault::NoService => b"554 5.3.2 sink.test: no SMTP service for you\r\n",
                    Fault::Hang => {
                        // Silent until the client gives up.
                        let _ = tokio::io::AsyncReadExt::read_to_end(&mut r, &mut Vec::new()).await;
                        return;
                    }
                    Fault::None | Fault::DropInData => b"220 sink.test ESMTP\r\n",
                };
                if w.write_all(greeting).await.is_err() || !greeting.starts_with(b"220") {
                    return;
                }
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
                            // A 5xx refuses the recipient for good (5.1.1); a 4xx asks to come back later.
                            code if code >= 500 => format!("{code} 5.1.1 no such recipient\r\n"),
                            code => format!("{code} 4.0.0 not now\r\n"),
                        }
                    } else if upper.starts_with("DATA") {
                        let _ = w.write_all(b"354 go\r\n").await;
                        let mut data = Vec::new();
                        loop {
                            let mut l = Vec::new();
                            if r.read_until(b'\n', &mut l).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if fault == Fault::DropInData && data.len() > 200 {
                                // Cut off: the client sees the connection close before the final reply.
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
    SmtpSink { addr, inbox, connections, task }
}

/// Sends `n` policy requests (distinct transactions `PREFIX.i`) from `client_ip` with `helo` and
/// `sender` over one connection to the policy server at `policy`; returns the `action=` lines.
pub async fn policy_checks(policy: SocketAddr, client_ip: &str, helo: &str, sender: &str, prefix: &str, n: usize) -> Vec<String> {
    use tokio::io::AsyncBufReadExt;
    let (r, mut w) = tokio::net::TcpStream::connect(policy).await.expect("connect to the policy server").into_split();
    let mut r = tokio::io::BufReader::new(r);
    let mut actions = Vec::with_capacity(n);
    for i in 0..n {
        let req = format!(
            "request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address={client_ip}\nhelo_name={helo}\n\
             sender={sender}\nrecipient=victim@ours.example\ninstance={prefix}.{i}\n\n"
        );
        w.write_all(req.as_bytes()).await.expect("send a policy request");
        let mut action = String::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).await.expect("read a policy answer");
            if line == "\n" || line.is_empty() {
                break;
            }
            action.push_str(line.trim_end());
        }
        actions.push(action);
    }
    actions
}

/// A failed MAIL FROM check of `domain` (`-all`) from 203.0.113.9, as the policy server's writer stores
/// it: the row a queued SPF report points to. Tests change the fields they care about with `..`.
pub fn failed_check(domain: &str, mail_from: &str) -> rebound::store::spf::SpfCheckRow {
    rebound::store::spf::SpfCheckRow {
        checked_at: chrono::Utc::now(),
        client_ip: "203.0.113.9".into(),
        client_name: None,
        helo: Some("bad.example.net".into()),
        mail_from: Some(mail_from.into()),
        rcpt_to: Some("victim@ours.example".into()),
        queue_id: None,
        identity: "mail_from",
        domain: domain.into(),
        result: "fail",
        explanation: None,
        record: Some("v=spf1 -all".into()),
        mechanism: Some("-all".into()),
        action: Some("PREPEND".into()),
    }
}
