//! Postfix policy requests per second and latency (p50/p99) of rebound's SPF policy server, and, in the
//! same run on the same requests (both only adding headers, rejecting nothing), of Debian's postfix-policyd-spf-python (`policyd-spf`), both resolving
//! through one local DNS server (python3-dnslib, 127.0.0.1) that serves 100 sender domains and 100 HELO
//! names. Targets (issue 5): at least 20x policyd-spf's throughput, p99 <= 2 ms with a warm cache.
//!
//!     nice -n 10 cargo bench --bench spf_policy
//!
//! Needs /usr/bin/python3 with dnslib (python3-dnslib); policyd-spf (postfix-policyd-spf-python) for
//! the comparison. Skips what is missing, saying so.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rebound::spf::config::PolicyMode;
use rebound::spf::dns::{DnsOptions, DnsResolver, DnsServers};
use rebound::spf::policy::{PolicyService, PolicySettings};
use rebound::spf::Verifier;

const DOMAINS: usize = 100;
const REBOUND_REQUESTS: usize = 20_000;
const POLICYD_REQUESTS: usize = 400;
const CONNECTIONS: usize = 8;

const DNS_SERVER: &str = r#"
import socketserver, sys
from dnslib import DNSRecord, RR, QTYPE, RCODE, TXT, A, MX
zone = {}
def add(name, rtype, rdata):
    zone.setdefault((name, rtype), []).append(rdata)
for i in range(1, 101):
    d = "d%d.bench.test" % i
    add(d, "TXT", TXT("v=spf1 ip4:198.51.100.0/24 include:_spf.bench.test mx -all"))
    add(d, "MX", MX("mx." + d, 10))
    add("mx." + d, "A", A("198.51.100.%d" % i))
    h = "mail%d.client.test" % i
    add(h, "TXT", TXT("v=spf1 a -all"))
    add(h, "A", A("192.0.2.%d" % i))
add("_spf.bench.test", "TXT", TXT("v=spf1 ip4:203.0.113.0/24 ~all"))
names = {n for n, _ in zone}
class H(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        try:
            req = DNSRecord.parse(data)
        except Exception:
            return
        name = str(req.q.qname).rstrip(".").lower()
        rep = req.reply()
        if name not in names:
            rep.header.rcode = RCODE.NXDOMAIN
        for r in zone.get((name, QTYPE[req.q.qtype]), []):
            rep.add_answer(RR(req.q.qname, req.q.qtype, rdata=r, ttl=3600))
        sock.sendto(rep.pack(), self.client_address)
srv = socketserver.ThreadingUDPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

const POLICYD: &str = r#"
import sys
import spf
port = int(sys.argv[1])
# pyspf resolves with dnspython when it is installed, else with pydns: point both at the bench server.
try:
    import dns.resolver
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = ["127.0.0.1"]
    r.port = port
    r.timeout = r.lifetime = 5
    dns.resolver.default_resolver = r
except ImportError:
    pass
try:
    import DNS
    DNS.defaults["server"] = ["127.0.0.1"]
    DNS.defaults["port"] = port
    DNS.defaults["timeout"] = 5
except ImportError:
    pass
sys.argv = ["policyd-spf", sys.argv[2]]
from spf_engine.policyd_spf import main
main()
"#;

const POLICYD_CONF: &str = "debugLevel = 0\nTestOnly = 1\nHELO_reject = False\nMail_From_reject = False\n\
PermError_reject = False\nTempError_Defer = False\nskip_addresses = 127.0.0.0/8,::ffff:127.0.0.0/104,::1\n";

/// The i-th request: clients 192.0.2.N (pass HELO, fail MAIL FROM) and, every fourth, 198.51.100.N
/// (pass MAIL FROM); a distinct instance each, so nothing is answered from a transaction memory.
fn request(i: usize) -> String {
    let n = i % DOMAINS + 1;
    let ip = if i.is_multiple_of(4) { format!("198.51.100.{n}") } else { format!("192.0.2.{n}") };
    format!(
        "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\nclient_address={ip}\n\
         client_name=unknown\nhelo_name=mail{n}.client.test\nsender=user{i}@d{n}.bench.test\n\
         recipient=rcpt@example.org\ninstance=bench.{i}\nqueue_id=\nsize=0\n\n"
    )
}

struct Stats {
    requests: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    answers: Vec<String>,
}

impl Stats {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&mut self, p: f64) -> Duration {
        self.latencies.sort();
        let idx = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[idx.min(self.latencies.len() - 1)]
    }
    fn show(&mut self, name: &str) {
        let (p50, p99) = (self.pct(0.50), self.pct(0.99));
        println!(
            "{name:<44} {:>7} req  {:>10.0} req/s  p50 {:>8.3} ms  p99 {:>8.3} ms",
            self.requests,
            self.rps(),
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
        println!("{:<44} results: {}", "", tally(&self.answers));
    }
}

/// Sends requests `range` over one connection, one at a time, timing each answer.
fn run_connection(
    reader: &mut dyn BufRead,
    writer: &mut dyn Write,
    range: std::ops::Range<usize>,
) -> (Vec<Duration>, Vec<String>) {
    let mut lat = Vec::with_capacity(range.len());
    let mut answers = Vec::with_capacity(range.len());
    let mut line = String::new();
    for i in range {
        let t = Instant::now();
        writer.write_all(request(i).as_bytes()).expect("write request");
        writer.flush().expect("flush");
        let mut got_action = false;
        loop {
            line.clear();
            if reader.read_line(&mut line).expect("read answer") == 0 {
                panic!("server closed the connection");
            }
            if line == "\n" && got_action {
                break;
            }
            if line.starts_with("action=") {
                got_action = true;
                answers.push(line.trim_end().to_string());
            }
        }
        lat.push(t.elapsed());
    }
    (lat, answers)
}

/// The MAIL FROM result word of an answer (`Received-SPF: <word>`), lower-cased.
fn result_word(answer: &str) -> String {
    let lower = answer.to_ascii_lowercase();
    lower.split("received-spf: ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("?").to_string()
}

/// Counts the results; the comparison only means something when both sides resolved every name.
fn tally(answers: &[String]) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for a in answers {
        *counts.entry(result_word(a)).or_insert(0usize) += 1;
    }
    counts.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
}

fn rebound_round(addr: std::net::SocketAddr, total: usize, connections: usize, offset: usize) -> Stats {
    let per = total / connections;
    let start = Instant::now();
    let handles: Vec<_> = (0..connections)
        .map(|c| {
            std::thread::spawn(move || {
                let stream = TcpStream::connect(addr).expect("connect");
                stream.set_nodelay(true).ok();
                let mut writer = stream.try_clone().expect("clone");
                let mut reader = BufReader::new(stream);
                let from = offset + c * per;
                run_connection(&mut reader, &mut writer, from..from + per)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut answers = Vec::new();
    for h in handles {
        let (l, a) = h.join().expect("client thread");
        latencies.extend(l);
        answers.extend(a);
    }
    Stats { requests: per * connections, elapsed: start.elapsed(), latencies, answers }
}

fn python_with(module: &str) -> Option<&'static str> {
    ["/usr/bin/python3", "python3"].into_iter().find(|p| {
        Command::new(p).args(["-c", &format!("import {module}")]).output().map(|o| o.status.success()).unwrap_or(false)
    })
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let Some(python) = python_with("dnslib") else {
        println!("SKIPPED spf_policy bench: no python3 with dnslib (apt-get install python3-dnslib)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let server_py = dir.path().join("dns_server.py");
    std::fs::write(&server_py, DNS_SERVER).expect("write dns server");
    let mut dns = Killed(
        Command::new(python).arg(&server_py).stdout(Stdio::piped()).spawn().expect("start the dnslib server"),
    );
    let mut port_line = String::new();
    BufReader::new(dns.0.stdout.take().expect("stdout")).read_line(&mut port_line).expect("dns port");
    let dns_port: u16 = port_line.trim().parse().expect("dns port number");
    println!("DNS: python3-dnslib on 127.0.0.1:{dns_port}, {DOMAINS} sender domains, {DOMAINS} HELO names");

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let addr = rt.block_on(async {
        let options = DnsOptions {
            servers: DnsServers::List(vec![format!("127.0.0.1:{dns_port}").parse().expect("addr")]),
            ..DnsOptions::default()
        };
        let resolver = DnsResolver::new(&options).expect("resolver");
        let settings = PolicySettings {
            helo: PolicyMode::Relaxed,
            mail_from: PolicyMode::Relaxed,
            auth_serv_id: "bench.rebound.test".into(),
            trusted: vec![],
        };
        let service = Arc::new(PolicyService::new(Verifier::new(resolver, "bench.rebound.test"), settings, None));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(service.serve(listener, std::future::pending()));
        addr
    });

    // Cold: every name is fetched once from the DNS server.
    let mut cold = rebound_round(addr, DOMAINS * 4, 1, 0);
    cold.show("rebound, cold cache, 1 connection");
    let mut seq = rebound_round(addr, REBOUND_REQUESTS, 1, 1_000_000);
    seq.show("rebound, warm cache, 1 connection");
    let mut par = rebound_round(addr, REBOUND_REQUESTS, CONNECTIONS, 2_000_000);
    par.show(&format!("rebound, warm cache, {CONNECTIONS} connections"));

    let policyd_ok = std::path::Path::new("/usr/lib/python3/dist-packages/spf_engine/policyd_spf.py").exists()
        && python_with("DNS").is_some();
    if !policyd_ok {
        println!("SKIPPED policyd-spf comparison: postfix-policyd-spf-python or python3-dns is not installed");
        return;
    }
    let conf = dir.path().join("policyd-spf.conf");
    std::fs::write(&conf, POLICYD_CONF).expect("write conf");
    let wrapper = dir.path().join("policyd.py");
    std::fs::write(&wrapper, POLICYD).expect("write wrapper");
    let mut child = Killed(
        Command::new("/usr/bin/python3")
            .arg(&wrapper)
            .arg(dns_port.to_string())
            .arg(&conf)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start policyd-spf"),
    );
    let mut stdin = child.0.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.0.stdout.take().expect("stdout"));
    let _ = run_connection(&mut stdout, &mut stdin, 3_000_000..3_000_000 + 20);
    let start = Instant::now();
    let (lat, answers) = run_connection(&mut stdout, &mut stdin, 4_000_000..4_000_000 + POLICYD_REQUESTS);
    let mut theirs = Stats { requests: POLICYD_REQUESTS, elapsed: start.elapsed(), latencies: lat, answers };
    theirs.show("policyd-spf (Debian 3.0.4), 1 process");
    let unresolved = theirs.answers.iter().chain(seq.answers.iter()).filter(|a| !matches!(result_word(a).as_str(), "pass" | "fail")).count();
    if unresolved > 0 {
        println!("WARNING: {unresolved} answers are neither pass nor fail: a side did not resolve through the bench DNS server");
    }
    println!(
        "throughput ratio, 1 connection vs 1 process: {:.1}x; {CONNECTIONS} connections vs 1 process: {:.1}x",
        seq.rps() / theirs.rps(),
        par.rps() / theirs.rps()
    );
}
