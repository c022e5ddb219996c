//! `[report.spf]` and `[smtp]`: who reports are from, how often an address may get one, the safety
//! lists, and the relay they go through. Unknown keys are errors; [`ReportSpfConfig::validate`] does no
//! I/O (keys are loaded by [`super::dkim::DkimKey::load`]).

use std::time::Duration;

use serde::Deserialize;

use crate::spf::config::Network;

/// `[report.spf]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportSpfConfig {
    /// The kill switch: false stops both queueing and sending at once.
    pub enabled: bool,
    /// Display name of the From address.
    pub from_name: String,
    /// The From address (required when enabled).
    pub from_address: String,
    /// The Subject.
    pub subject: String,
    /// Reports per report address, `N/PERIOD` with PERIOD like `1d`, `12h`, `30m` (default `1/1d`).
    pub rate: String,
    /// Reports per hour in all, across every process sharing the database.
    pub max_per_hour: u32,
    /// DKIM keys (names of `[dkim.NAME]` sections) to sign with.
    pub sign: Vec<String>,
    /// Only report to these domains (and their subdomains) when not empty.
    pub allow: Vec<String>,
    /// Never report to these domains (and their subdomains).
    pub deny: Vec<String>,
    /// Our own domains: never a report to them, whatever their records say.
    pub own_domains: Vec<String>,
    /// Our own networks: never a report for mail that came from them.
    pub own_networks: Vec<String>,
    /// Delivery attempts before a report is given up.
    pub max_attempts: u32,
}

impl Default for ReportSpfConfig {
    fn default() -> Self {
        ReportSpfConfig {
            enabled: false,
            from_name: "rebound".into(),
            from_address: String::new(),
            subject: "SPF failure report".into(),
            rate: "1/1d".into(),
            max_per_hour: 100,
            sign: Vec::new(),
            allow: Vec::new(),
            deny: Vec::new(),
            own_domains: Vec::new(),
            own_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
            max_attempts: 8,
        }
    }
}

/// `[smtp]`: the relay reports (and mailed digests) go through.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// `HOST:PORT` of the relay.
    pub relay: String,
    /// `none` (plain SMTP; TLS is not built in yet).
    pub tls: String,
    /// Seconds to wait for the relay at each step.
    pub timeout_secs: u64,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig { relay: "127.0.0.1:25".into(), tls: "none".into(), timeout_secs: 30 }
    }
}

/// A rate: at most `count` per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// How many.
    pub count: u32,
    /// Per how long.
    pub period: Duration,
}

/// An invalid value in `[report.spf]` or `[smtp]`.
#[derive(Debug, thiserror::Error)]
pub enum ReportConfigError {
    /// Bad `rate`.
    #[error("[report.spf] rate = {0:?}: expected N/PERIOD, e.g. 1/1d, 10/12h, 5/30m")]
    Rate(String),
    /// Enabled without a From address.
    #[error("[report.spf] from_address must be set when enabled = true")]
    NoFrom,
    /// A bad network.
    #[error("[report.spf] own_networks: {0:?} is not an address or CIDR network")]
    Network(String),
    /// Bad relay.
    #[error("[smtp] relay = {0:?}: expected HOST:PORT")]
    Relay(String),
    /// TLS asked for.
    #[error("[smtp] tls = {0:?}: only \"none\" is supported in this version")]
    Tls(String),
}

impl Rate {
    /// Parses `N/PERIOD`.
    pub fn parse(s: &str) -> Option<Rate> {
        let (n, period) = s.trim().split_once('/')?;
        let count: u32 = n.trim().parse().ok()?;
        let period = period.trim();
        let (num, unit) = period.split_at(period.find(|c: char| !c.is_ascii_digit()).unwrap_or(period.len()));
        let num: u64 = if num.is_empty() { 1 } else { num.parse().ok()? };
        let secs = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return None,
        };
        (num > 0).then(|| Rate { count, period: Duration::from_secs(num * secs) })
    }
}

impl ReportSpfConfig {
    /// Checks every value; no I/O.
    pub fn validate(&self) -> Result<(), ReportConfigError> {
        self.rate()?;
        self.own_networks()?;
        if self.enabled && self.from_address.trim().is_empty() {
            return Err(ReportConfigError::NoFrom);
        }
        Ok(())
    }

    /// The per-address rate.
    pub fn rate(&self) -> Result<Rate, ReportConfigError> {
        Rate::parse(&self.rate).ok_or_else(|| ReportConfigError::Rate(self.rate.clone()))
    }

    /// Our networks.
    pub fn own_networks(&self) -> Result<Vec<Network>, ReportConfigError> {
        self.own_networks.iter().map(|s| s.parse().map_err(|_| ReportConfigError::Network(s.clone()))).collect()
    }
}

impl SmtpConfig {
    /// Checks every value; no I/O.
    pub fn validate(&self) -> Result<(), ReportConfigError> {
        self.relay()?;
        if !self.tls.eq_ignore_ascii_case("none") {
            return Err(ReportConfigError::Tls(self.tls.clone()));
        }
        Ok(())
    }

    /// Host and port of the relay.
    pub fn relay(&self) -> Result<(String, u16), ReportConfigError> {
        let bad = || ReportConfigError::Relay(self.relay.clone());
        let (host, port) = self.relay.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        Ok((host.to_string(), port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(Rate::parse("1/1d"), Some(Rate { count: 1, period: Duration::from_secs(86_400) }));
        assert_eq!(Rate::parse("10/12h").unwrap().period, Duration::from_secs(43_200));
        assert_eq!(Rate::parse("5/m").unwrap().period, Duration::from_secs(60));
        assert!(Rate::parse("1/0d").is_none());
        assert!(Rate::parse("x/1d").is_none());
        assert!(Rate::parse("1/1w").is_none());
    }

    #[test]
    fn defaults_are_off_and_valid() {
        let c = ReportSpfConfig::default();
        assert!(!c.enabled);
        c.validate().unwrap();
        let on = ReportSpfConfig { enabled: true, ..ReportSpfConfig::default() };
        assert!(matches!(on.validate(), Err(ReportConfigError::NoFrom)));
        assert!(toml::from_str::<ReportSpfConfig>("enable = true").is_err());
        SmtpConfig::default().validate().unwrap();
        assert_eq!(SmtpConfig::default().relay().unwrap(), ("127.0.0.1".to_string(), 25));
    }
}
