//! The `[spf]` section of `rebound.toml`: the policy server's listener, the policy per identity, the
//! authserv-id of Authentication-Results, the DNS servers and the trusted networks. Unknown keys are
//! errors; [`SpfConfig::validate`] checks everything without doing any I/O.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::dns::{DnsOptions, DnsServers};

/// What to do with one identity's result (the names Stalwart uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    /// Check and add the result headers; never reject.
    Relaxed,
    /// Check; reject `fail` (550 5.7.23), defer `temperror` (451 4.7.24); headers otherwise.
    Strict,
    /// Do not check this identity.
    Disable,
}

/// `dns = "system"` or `dns = ["127.0.0.1:53", "[::1]:5353"]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum DnsSetting {
    /// `"system"` (or one server as a string).
    One(String),
    /// A list of servers.
    List(Vec<String>),
}

/// `[spf]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpfConfig {
    /// Where the Postfix policy server listens (`check_policy_service inet:127.0.0.1:10045`).
    pub listen: String,
    /// Policy for the HELO identity.
    pub helo: PolicyMode,
    /// Policy for the MAIL FROM identity.
    pub mail_from: PolicyMode,
    /// The authserv-id of Authentication-Results and Received-SPF's `receiver=` (our host name when
    /// empty).
    pub auth_serv_id: String,
    /// DNS servers: `"system"` or a list of `IP[:PORT]`.
    pub dns: DnsSetting,
    /// Seconds to wait for one DNS answer.
    pub dns_timeout_secs: u64,
    /// Seconds a policy request may take to arrive once its first byte came; a client slower than that
    /// (one trickling its request) is disconnected.
    pub request_timeout_secs: u64,
    /// Clients in these networks (CIDR) are not checked: the policy answers DUNNO.
    pub trusted_networks: Vec<String>,
    /// Networks (CIDR) whose clients (MTAs) may connect to the policy server; empty allows every one.
    /// Others are answered `defer_if_permit` and closed, with a log line.
    pub allow_networks: Vec<String>,
    /// Answer a check only once it is committed to `spf_checks` (a crash then loses no answered check;
    /// each answer waits for a commit). Default false: answer at once, write right after.
    pub answer_after_store: bool,
}

impl Default for SpfConfig {
    fn default() -> Self {
        SpfConfig {
            listen: "127.0.0.1:10045".into(),
            helo: PolicyMode::Relaxed,
            mail_from: PolicyMode::Relaxed,
            auth_serv_id: String::new(),
            dns: DnsSetting::One("system".into()),
            dns_timeout_secs: 2,
            request_timeout_secs: super::policy::REQUEST_TIMEOUT.as_secs(),
            trusted_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
            allow_networks: Vec::new(),
            answer_after_store: false,
        }
    }
}

/// An invalid `[spf]` value.
#[derive(Debug, thiserror::Error)]
pub enum SpfConfigError {
    /// `listen` is not `IP:PORT`.
    #[error("[spf] listen = {0:?}: expected IP:PORT, e.g. 127.0.0.1:10045")]
    Listen(String),
    /// A bad DNS server.
    #[error("[spf] dns: {0}")]
    Dns(#[from] super::dns::DnsConfigError),
    /// A bad network.
    #[error("[spf] trusted_networks: {0:?} is not an address or CIDR network")]
    Network(String),
    /// A bad `allow_networks` entry.
    #[error("[spf] {0}")]
    Allow(#[from] crate::config::AllowListError),
    /// An empty DNS server list.
    #[error("[spf] dns: the server list is empty (use \"system\" for the system resolver)")]
    NoServers,
    /// dns_timeout_secs out of range.
    #[error("[spf] dns_timeout_secs must be between 1 and 30")]
    Timeout,
    /// request_timeout_secs out of range.
    #[error("[spf] request_timeout_secs must be between 1 and 300")]
    RequestTimeout,
}

impl SpfConfig {
    /// Checks every value; no I/O.
    pub fn validate(&self) -> Result<(), SpfConfigError> {
        self.listen_addr()?;
        self.dns_options()?;
        self.request_timeout()?;
        self.trusted()?;
        self.allowed()?;
        Ok(())
    }

    /// The clients allowed to connect.
    pub fn allowed(&self) -> Result<crate::config::AllowList, SpfConfigError> {
        Ok(crate::config::AllowList::parse(&self.allow_networks)?)
    }

    /// The listener address.
    pub fn listen_addr(&self) -> Result<SocketAddr, SpfConfigError> {
        self.listen.parse().map_err(|_| SpfConfigError::Listen(self.listen.clone()))
    }

    /// How long one policy request may take to arrive once begun.
    pub fn request_timeout(&self) -> Result<Duration, SpfConfigError> {
        if !(1..=300).contains(&self.request_timeout_secs) {
            return Err(SpfConfigError::RequestTimeout);
        }
        Ok(Duration::from_secs(self.request_timeout_secs))
    }

    /// The resolver options.
    pub fn dns_options(&self) -> Result<DnsOptions, SpfConfigError> {
        if !(1..=30).contains(&self.dns_timeout_secs) {
            return Err(SpfConfigError::Timeout);
        }
        let servers = match &self.dns {
            DnsSetting::One(s) if s.eq_ignore_ascii_case("system") => DnsServers::System,
            DnsSetting::One(s) => DnsServers::List(vec![DnsServers::parse_one(s)?]),
            DnsSetting::List(l) if l.is_empty() => return Err(SpfConfigError::NoServers),
            DnsSetting::List(l) => DnsServers::List(l.iter().map(|s| DnsServers::parse_one(s)).collect::<Result<_, _>>()?),
        };
        Ok(DnsOptions { servers, timeout: Duration::from_secs(self.dns_timeout_secs), ..DnsOptions::default() })
    }

    /// The trusted networks.
    pub fn trusted(&self) -> Result<Vec<Network>, SpfConfigError> {
        self.trusted_networks.iter().map(|s| s.parse().map_err(|_| SpfConfigError::Network(s.clone()))).collect()
    }
}

/// This machine's host name (from /proc or /etc/hostname), "localhost" when neither says.
pub fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

impl SpfConfig {
    /// The authserv-id: `auth_serv_id`, or this machine's host name when that is empty.
    pub fn auth_serv_id(&self) -> String {
        if self.auth_serv_id.is_empty() { host_name() } else { self.auth_serv_id.clone() }
    }
}

/// An IP network (`192.0.2.0/24`, `2001:db8::/32`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// True when `ip` (an IPv4-mapped address counts as IPv4) is in the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let (a, b, bits) = match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (u128::from(u32::from(n)), u128::from(u32::from(i)), 32),
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), 128),
            _ => return false,
        };
        let prefix = u32::from(self.prefix);
        prefix == 0 || (a >> (bits - prefix)) == (b >> (bits - prefix))
    }
}

impl FromStr for Network {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().map_err(|_| ())?, Some(p.parse::<u8>().map_err(|_| ())?)),
            None => (s.trim().parse::<IpAddr>().map_err(|_| ())?, None),
        };
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(());
        }
        Ok(Network { addr, prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_safe_and_valid() {
        let c = SpfConfig::default();
        c.validate().unwrap();
        assert!(c.listen_addr().unwrap().ip().is_loopback());
        assert_eq!(c.dns_options().unwrap().servers, DnsServers::System);
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<SpfConfig>("listn = \"127.0.0.1:1\"").is_err());
        let c: SpfConfig = toml::from_str("helo = \"strict\"\ndns = [\"127.0.0.1:5353\"]").unwrap();
        assert_eq!(c.request_timeout().unwrap(), super::super::policy::REQUEST_TIMEOUT, "the default");
        let slow: SpfConfig = toml::from_str("request_timeout_secs = 0").unwrap();
        assert!(matches!(slow.validate(), Err(SpfConfigError::RequestTimeout)));
        assert_eq!(c.helo, PolicyMode::Strict);
        assert_eq!(c.dns_options().unwrap().servers, DnsServers::List(vec!["127.0.0.1:5353".parse().unwrap()]));
    }

    #[test]
    fn networks() {
        let n: Network = "192.0.2.0/24".parse().unwrap();
        assert!(n.contains("192.0.2.77".parse().unwrap()));
        assert!(n.contains("::ffff:192.0.2.77".parse().unwrap()));
        assert!(!n.contains("192.0.3.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        let bad = SpfConfig { trusted_networks: vec!["nope".into()], ..SpfConfig::default() };
        assert!(bad.validate().is_err());
    }
}
