//! The DNS layer of the SPF evaluator: the [`Resolver`] trait the evaluator is written against, and
//! [`DnsResolver`], its implementation over hickory-resolver (the system configuration or a list of
//! servers, UDP with TCP fallback on truncation, a response cache, per-query timeouts).
//!
//! RFC 7208 §4.6.4 and §5 need three answers kept apart, which most resolver APIs fold into one error:
//! records, "no records" (RCODE 0 with an empty answer: a void lookup), "Name Error" (RCODE 3: a void
//! lookup, and `none` for the record lookup), and a failure (timeout, SERVFAIL: `temperror`).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ProtocolConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::op::{Message, Query};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// What a DNS query answered, when it answered at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    /// RCODE 0 with at least one record of the asked type.
    Records(Vec<T>),
    /// RCODE 0 and no record of the asked type (counts as a void lookup, RFC 7208 §4.6.4).
    NoData,
    /// RCODE 3, "Name Error" (counts as a void lookup; `none` for the SPF record lookup).
    NxDomain,
}

impl<T> Answer<T> {
    /// The records, empty for `NoData` and `NxDomain`.
    pub fn records(&self) -> &[T] {
        match self {
            Answer::Records(r) => r,
            Answer::NoData | Answer::NxDomain => &[],
        }
    }

    /// True when the lookup was void (no records, or the name does not exist).
    pub fn is_void(&self) -> bool {
        self.records().is_empty()
    }
}

/// A query that got no usable answer: a timeout, SERVFAIL or another RCODE, a transport error.
/// The evaluator turns it into `temperror` (RFC 7208 §2.6.6).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DNS {kind} query for {name} failed: {reason}")]
pub struct DnsFailure {
    /// The name queried.
    pub name: String,
    /// The record type queried (TXT, A, ...).
    pub kind: &'static str,
    /// Why it failed, as the resolver said it.
    pub reason: String,
}

/// One MX record: preference and exchange host (the exchange is empty for a null MX, RFC 7505).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mx {
    /// Lower is preferred.
    pub preference: u16,
    /// The mail exchanger's host name, without the trailing dot.
    pub exchange: String,
}

/// The lookups check_host() needs. Names are given without a trailing dot; implementations treat them as
/// fully qualified (no search list). A name that cannot be a DNS name (a label over 63 octets, an empty
/// label, over 253 octets) answers `NxDomain` without a query.
pub trait Resolver: Send + Sync {
    /// TXT records at `name`, each one's strings joined without separator (RFC 7208 §3.3).
    fn txt(&self, name: &str) -> impl Future<Output = Result<Answer<Vec<u8>>, DnsFailure>> + Send;
    /// A records at `name`.
    fn a(&self, name: &str) -> impl Future<Output = Result<Answer<Ipv4Addr>, DnsFailure>> + Send;
    /// AAAA records at `name`.
    fn aaaa(&self, name: &str) -> impl Future<Output = Result<Answer<Ipv6Addr>, DnsFailure>> + Send;
    /// MX records at `name`.
    fn mx(&self, name: &str) -> impl Future<Output = Result<Answer<Mx>, DnsFailure>> + Send;
    /// PTR records for `ip` (in-addr.arpa or ip6.arpa), host names without the trailing dot.
    fn ptr(&self, ip: IpAddr) -> impl Future<Output = Result<Answer<String>, DnsFailure>> + Send;
}

/// Where DNS queries go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsServers {
    /// The system configuration (`/etc/resolv.conf`).
    System,
    /// These servers, in order (UDP, TCP when a reply is truncated).
    List(Vec<SocketAddr>),
}

impl DnsServers {
    /// Parses `system` or one server `HOST:PORT` / `IP` (port 53) / `[V6]:PORT`.
    pub fn parse_one(s: &str) -> Result<SocketAddr, DnsConfigError> {
        let s = s.trim();
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(sa);
        }
        if let Ok(ip) = s.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, 53));
        }
        Err(DnsConfigError::BadServer(s.to_string()))
    }
}

/// Tuning of the resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsOptions {
    /// The servers.
    pub servers: DnsServers,
    /// Time to wait for one answer before retrying or giving up.
    pub timeout: Duration,
    /// Tries per query (per server).
    pub attempts: usize,
    /// Cached answers (hickory's response cache, honouring TTLs).
    pub cache_size: u64,
}

impl Default for DnsOptions {
    fn default() -> Self {
        DnsOptions { servers: DnsServers::System, timeout: Duration::from_secs(2), attempts: 2, cache_size: 8192 }
    }
}

/// The resolver could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DnsConfigError {
    /// A server address that is neither `IP`, `IP:PORT` nor `[IPv6]:PORT`.
    #[error("bad DNS server address {0:?}: expected IP, IP:PORT or [IPv6]:PORT")]
    BadServer(String),
    /// The system configuration could not be read or the resolver not built.
    #[error("cannot set up the DNS resolver: {0}")]
    Resolver(#[from] hickory_resolver::net::NetError),
}

/// The production resolver: hickory-resolver with its response cache.
#[derive(Clone)]
pub struct DnsResolver {
    inner: Arc<TokioResolver>,
    /// The servers, for the raw TXT fallback.
    servers: Arc<Vec<SocketAddr>>,
    timeout: Duration,
}

impl std::fmt::Debug for DnsResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DnsResolver")
    }
}

impl DnsResolver {
    /// Builds a resolver. Must be called inside a Tokio runtime.
    pub fn new(options: &DnsOptions) -> Result<DnsResolver, DnsConfigError> {
        let provider = TokioRuntimeProvider::default();
        let mut fallback = Vec::new();
        let mut builder = match &options.servers {
            DnsServers::System => {
                let (config, system_opts) = hickory_resolver::system_conf::read_system_conf()?;
                for ns in config.name_servers() {
                    if let Some(udp) = ns.connections.iter().find(|c| matches!(c.protocol, ProtocolConfig::Udp)) {
                        fallback.push(SocketAddr::new(ns.ip, udp.port));
                    }
                }
                let mut builder = TokioResolver::builder_with_config(config, provider);
                *builder.options_mut() = system_opts;
                builder
            }
            DnsServers::List(servers) => {
                fallback.extend(servers.iter().copied());
                let mut config = ResolverConfig::from_parts(None, vec![], vec![]);
                for sa in servers {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = sa.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = sa.port();
                    config.add_name_server(NameServerConfig::new(sa.ip(), true, vec![udp, tcp]));
                }
                TokioResolver::builder_with_config(config, provider)
            }
        };
        let opts = builder.options_mut();
        opts.timeout = options.timeout;
        opts.attempts = options.attempts.max(1);
        opts.cache_size = options.cache_size;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.ndots = 0;
        opts.preserve_intermediates = false;
        // Negative answers from servers without an SOA would otherwise not be cached at all.
        opts.negative_min_ttl = Some(Duration::from_secs(30));
        Ok(DnsResolver { inner: Arc::new(builder.build()?), servers: Arc::new(fallback), timeout: options.timeout })
    }

    async fn query<T>(
        &self,
        name: &str,
        rtype: RecordType,
        pick: impl Fn(&RData) -> Option<T>,
    ) -> Result<Answer<T>, DnsFailure> {
        let Some(qname) = to_name(name) else {
            return Ok(Answer::NxDomain);
        };
        self.query_name(qname, name, rtype, pick).await
    }

    async fn query_name<T>(
        &self,
        qname: Name,
        shown: &str,
        rtype: RecordType,
        pick: impl Fn(&RData) -> Option<T>,
    ) -> Result<Answer<T>, DnsFailure> {
        Self::answer(self.inner.lookup(qname, rtype).await, shown, rtype, pick)
    }

    fn answer<T>(
        result: Result<hickory_resolver::lookup::Lookup, NetError>,
        shown: &str,
        rtype: RecordType,
        pick: impl Fn(&RData) -> Option<T>,
    ) -> Result<Answer<T>, DnsFailure> {
        match result {
            Ok(lookup) => {
                let records: Vec<T> = lookup.answers().iter().filter_map(|r| pick(&r.data)).collect();
                Ok(if records.is_empty() { Answer::NoData } else { Answer::Records(records) })
            }
            Err(e) if e.is_nx_domain() => Ok(Answer::NxDomain),
            Err(e) if e.is_no_records_found() => Ok(Answer::NoData),
            Err(e) => Err(DnsFailure { name: shown.to_string(), kind: type_name(rtype), reason: e.to_string() }),
        }
    }
}

/// A TXT query sent and read without hickory's record decoder (see [`DnsResolver`]'s `txt`): UDP to
/// each server in turn, TCP when the reply is truncated. Only the answer section's TXT records are read;
/// a TXT record without strings is skipped.
async fn raw_txt(servers: &[SocketAddr], qname: &Name, shown: &str, timeout: Duration) -> Result<Answer<Vec<u8>>, DnsFailure> {
    let fail = |reason: String| DnsFailure { name: shown.to_string(), kind: "TXT", reason };
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(qname.clone(), RecordType::TXT));
    let id = query.metadata.id;
    let bytes = query.to_vec().map_err(|e| fail(e.to_string()))?;
    let mut last = String::from("no DNS server configured");
    for server in servers {
        let reply = match tokio::time::timeout(timeout, udp_exchange(*server, &bytes)).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                last = e.to_string();
                continue;
            }
            Err(_) => {
                last = format!("no answer from {server} within {} ms", timeout.as_millis());
                continue;
            }
        };
        let reply = if reply.len() > 2 && reply[2] & 0x02 != 0 {
            match tokio::time::timeout(timeout, tcp_exchange(*server, &bytes)).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => {
                    last = e.to_string();
                    continue;
                }
                Err(_) => {
                    last = format!("no TCP answer from {server}");
                    continue;
                }
            }
        } else {
            reply
        };
        return parse_txt_reply(&reply, id).map_err(|e| fail(e.to_string()));
    }
    Err(fail(last))
}

async fn udp_exchange(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() { "0.0.0.0:0".parse() } else { "[::]:0".parse() }
        .map_err(std::io::Error::other)?;
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 65_535];
    let n = socket.recv(&mut buf).await?;
    buf.truncate(n);
    Ok(buf)
}

async fn tcp_exchange(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(server).await?;
    let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(query);
    stream.write_all(&out).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

/// A malformed DNS reply.
#[derive(Debug, thiserror::Error)]
#[error("malformed DNS reply: {0}")]
struct Malformed(&'static str);

/// Reads the TXT records of a reply (RFC 1035 §4.1), tolerating records without strings.
fn parse_txt_reply(msg: &[u8], id: u16) -> Result<Answer<Vec<u8>>, Malformed> {
    let get = |i: usize| msg.get(i).copied().ok_or(Malformed("truncated"));
    let u16_at = |i: usize| -> Result<usize, Malformed> { Ok(usize::from(get(i)?) << 8 | usize::from(get(i + 1)?)) };
    if msg.len() < 12 || u16_at(0)? != usize::from(id) || get(2)? & 0x80 == 0 {
        return Err(Malformed("not the reply to our query"));
    }
    match get(3)? & 0x0f {
        0 => {}
        3 => return Ok(Answer::NxDomain),
        _ => return Err(Malformed("server error (RCODE not 0 or 3)")),
    }
    let questions = u16_at(4)?;
    let answers = u16_at(6)?;
    let skip_name = |mut i: usize| -> Result<usize, Malformed> {
        loop {
            let len = get(i)?;
            if len & 0xc0 == 0xc0 {
                return Ok(i + 2);
            }
            if len == 0 {
                return Ok(i + 1);
            }
            i += usize::from(len) + 1;
        }
    };
    let mut i = 12;
    for _ in 0..questions {
        i = skip_name(i)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..answers {
        i = skip_name(i)?;
        let rtype = u16_at(i)?;
        let rdlen = u16_at(i + 8)?;
        let start = i + 10;
        let end = start + rdlen;
        if end > msg.len() {
            return Err(Malformed("record past the end"));
        }
        if rtype == 16 && rdlen > 0 {
            let mut text = Vec::new();
            let mut j = start;
            while j < end {
                let n = usize::from(msg[j]);
                let piece = msg.get(j + 1..j + 1 + n).filter(|_| j + 1 + n <= end).ok_or(Malformed("TXT string past its record"))?;
                text.extend_from_slice(piece);
                j += 1 + n;
            }
            out.push(text);
        }
        i = end;
    }
    Ok(if out.is_empty() { Answer::NoData } else { Answer::Records(out) })
}

fn type_name(t: RecordType) -> &'static str {
    match t {
        RecordType::TXT => "TXT",
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::MX => "MX",
        RecordType::PTR => "PTR",
        _ => "other",
    }
}

/// A fully qualified DNS name from raw labels (any octets, as RFC 7208 macro expansion can produce), or
/// `None` when it cannot be a DNS name.
fn to_name(name: &str) -> Option<Name> {
    if !is_dns_name(name) {
        return None;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    Name::from_labels(name.split('.').map(str::as_bytes)).ok()
}

/// True when `name` (optionally with one trailing dot) is a syntactically possible DNS name:
/// 1..=63 octets per label, no empty label, at most 253 octets in all (RFC 1035 §2.3.4).
pub fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty() && name.len() <= 253 && name.split('.').all(|l| !l.is_empty() && l.len() <= 63)
}

/// A host name from a DNS name: labels joined with dots, no trailing dot (empty for the root).
fn host_of(name: &Name) -> String {
    let mut out = String::new();
    for (i, label) in name.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(&String::from_utf8_lossy(label));
    }
    out
}

/// The reverse-lookup name of `ip`: `d.c.b.a.in-addr.arpa` or the 32 nibbles under `ip6.arpa`.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(72);
            for b in v6.octets().iter().rev() {
                s.push(char::from_digit(u32::from(b & 0x0f), 16).unwrap_or('0'));
                s.push('.');
                s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
                s.push('.');
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

impl Resolver for DnsResolver {
    async fn txt(&self, name: &str) -> Result<Answer<Vec<u8>>, DnsFailure> {
        let Some(qname) = to_name(name) else {
            return Ok(Answer::NxDomain);
        };
        match self.inner.lookup(qname.clone(), RecordType::TXT).await {
            // hickory-proto refuses a whole answer holding a TXT record with no strings (RDLENGTH 0),
            // which RFC 7208 §3.3 says must not break SPF: read that answer ourselves.
            Err(NetError::Proto(_)) => raw_txt(&self.servers, &qname, name, self.timeout).await,
            result => Self::answer(result, name, RecordType::TXT, |d| match d {
                RData::TXT(t) => Some(t.txt_data.iter().flat_map(|s| s.iter().copied()).collect()),
                _ => None,
            }),
        }
    }

    async fn a(&self, name: &str) -> Result<Answer<Ipv4Addr>, DnsFailure> {
        self.query(name, RecordType::A, |d| match d {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .await
    }

    async fn aaaa(&self, name: &str) -> Result<Answer<Ipv6Addr>, DnsFailure> {
        self.query(name, RecordType::AAAA, |d| match d {
            RData::AAAA(a) => Some(a.0),
            _ => None,
        })
        .await
    }

    async fn mx(&self, name: &str) -> Result<Answer<Mx>, DnsFailure> {
        self.query(name, RecordType::MX, |d| match d {
            RData::MX(mx) => Some(Mx { preference: mx.preference, exchange: host_of(&mx.exchange) }),
            _ => None,
        })
        .await
    }

    async fn ptr(&self, ip: IpAddr) -> Result<Answer<String>, DnsFailure> {
        let name = reverse_name(ip);
        self.query(&name, RecordType::PTR, |d| match d {
            RData::PTR(p) => Some(host_of(&p.0)),
            _ => None,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names_follow_rfc_1035_and_3596() {
        assert_eq!(reverse_name("192.0.2.1".parse().unwrap()), "1.2.0.192.in-addr.arpa");
        assert_eq!(
            reverse_name("2001:db8::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
    }

    #[test]
    fn names_that_cannot_exist_are_rejected_before_any_query() {
        assert!(is_dns_name("example.com."));
        assert!(is_dns_name("foo:bar/baz.example.com"));
        assert!(!is_dns_name("a..example.com"));
        assert!(!is_dns_name(&format!("{}.example.com", "a".repeat(64))));
        assert!(!is_dns_name(""));
    }

    #[test]
    fn server_addresses_parse_with_and_without_port() {
        assert_eq!(DnsServers::parse_one("127.0.0.1:5353").unwrap(), "127.0.0.1:5353".parse().unwrap());
        assert_eq!(DnsServers::parse_one("9.9.9.9").unwrap(), "9.9.9.9:53".parse().unwrap());
        assert_eq!(DnsServers::parse_one("[::1]:53").unwrap(), "[::1]:53".parse().unwrap());
        assert!(DnsServers::parse_one("dns.example").is_err());
    }
}
