//! TOML configuration (`config/rebound.toml`); unknown keys are errors.
//!
//! Loading is split in two, as vector does: [`Config::from_toml`] turns text into values (serde rejects
//! unknown keys, so a typo is an error naming the key, not a silent default), and [`Config::validate`] is a
//! pure check of the values (ranges, addresses) with no I/O. [`Config::load`] reads a file and runs both.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::lifecycle::{CategoryConfig, RetrainSchedule};
use crate::digest::DigestConfig;
use crate::metrics::MetricsConfig;
use crate::report::config::{ReportSpfConfig, SmtpConfig};
use crate::report::dkim::DkimKeyConfig;
use crate::spf::config::{Network, SpfConfig};

/// The default database: an SQLite file `rebound.db` in the current directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://rebound.db";

/// Why a configuration could not be used. Every variant names the file (or `<text>` for inline TOML).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key or a value of the wrong type.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message; it names the key and the line.
        message: String,
    },
    /// A value is well-formed but unusable.
    #[error("invalid config file {path}: key `{key}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The dotted key, e.g. `ingest.lmtp.max_connections`.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// The whole configuration file. Every section is optional; missing keys take safe defaults.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[database]`.
    pub database: DatabaseConfig,
    /// `[ingest]`, with `[ingest.lmtp]` inside.
    pub ingest: IngestConfig,
    /// `[classify]`.
    pub classify: ClassifyConfig,
    /// `[spf]`: when the section is present, `serve` runs the SPF policy server (and the report side).
    pub spf: Option<SpfConfig>,
    /// `[report]`, with `[report.spf]` inside.
    pub report: ReportConfig,
    /// `[dkim.NAME]`: the keys `[report.spf] sign` names.
    pub dkim: BTreeMap<String, DkimKeyConfig>,
    /// `[smtp]`: the relay reports go through.
    pub smtp: SmtpConfig,
    /// `[digest]`: digests `serve` writes on a schedule.
    pub digest: DigestConfig,
    /// `[metrics]`: when the section is present, `serve` answers `/metrics` and `/healthz` on its address.
    pub metrics: Option<MetricsConfig>,
}

/// `[report]`: outgoing reports.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// `[report.spf]`: SPF failure reports.
    pub spf: ReportSpfConfig,
}

/// `[classify]`: the trained model every source classifies with.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifyConfig {
    /// Directory of the trained model (`models/` of the repository). When it does not exist, reasons come
    /// from the structured-signal prior alone (with a warning); a corrupt model is an error.
    pub model: PathBuf,
    /// Below this confidence the model answers `onhold` instead of guessing.
    pub min_confidence: f32,
    /// Users' own categories (`[[classify.categories]]` or `[classify.categories.NAME]`), synced to the
    /// `categories` table at start and learned beside the built-in reasons.
    #[serde(deserialize_with = "crate::lifecycle::de_categories")]
    pub categories: Vec<CategoryConfig>,
    /// When `serve` looks for new labels and retrains.
    pub retrain_schedule: RetrainSchedule,
    /// Retrain only when at least this many labels are newer than the last trained version.
    pub min_new_labels: usize,
    /// The built-in training corpus (JSONL) retraining starts from.
    pub train_corpus: PathBuf,
}

impl Default for ClassifyConfig {
    fn default() -> Self {
        ClassifyConfig {
            model: PathBuf::from("models"),
            min_confidence: crate::classify::DEFAULT_MIN_CONFIDENCE,
            categories: Vec::new(),
            retrain_schedule: RetrainSchedule::Off,
            min_new_labels: 20,
            train_corpus: PathBuf::from(crate::cli::model::DEFAULT_CORPUS),
        }
    }
}

/// `[database]`: where messages are stored.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://USER@HOST/DB`.
    pub url: String,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig { url: DEFAULT_DATABASE_URL.to_string() }
    }
}

/// `[ingest]`: how messages from every source are committed.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Most messages committed in one transaction (group commit).
    pub max_batch: usize,
    /// How long the writer may hold a batch open for messages of other sessions (it commits at once when
    /// every connected session has its message in the batch).
    #[serde(deserialize_with = "de_duration")]
    pub commit_delay: Duration,
    /// `[ingest.lmtp]`.
    pub lmtp: LmtpConfig,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig { max_batch: 256, commit_delay: Duration::from_millis(2), lmtp: LmtpConfig::default() }
    }
}

/// `[ingest.lmtp]`: the LMTP listener of `rebound serve` (RFC 2033).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LmtpConfig {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// Largest message accepted, in bytes (LMTP `SIZE`); larger ones get 552 5.3.4. Also the limit of
    /// `rebound ingest`.
    pub max_message_size: usize,
    /// Most concurrent LMTP connections; one more is told 421 and closed.
    pub max_connections: usize,
    /// Most recipients per transaction; one more gets 452 4.5.3.
    pub max_recipients: usize,
    /// A command or data line not complete this long after the previous one closes the connection with 421.
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// A transaction (MAIL to the final `.` of its data) not complete this long after its MAIL command
    /// closes the connection with 421 4.4.2, unacknowledged: a client trickling its data cannot hold a
    /// connection slot for longer.
    #[serde(deserialize_with = "de_duration")]
    pub transaction_timeout: Duration,
    /// On SIGTERM/SIGINT, how long messages in flight may take to finish before the process exits.
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_grace: Duration,
    /// Client networks (CIDR or single addresses) allowed to connect; empty allows every client. Others
    /// are answered 421 4.7.1 and closed, with a log line.
    pub allow_networks: Vec<String>,
}

impl Default for LmtpConfig {
    fn default() -> Self {
        LmtpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 2424)),
            max_message_size: 10 * 1024 * 1024,
            max_connections: 100,
            max_recipients: 1000,
            idle_timeout: Duration::from_secs(300),
            transaction_timeout: Duration::from_secs(600),
            shutdown_grace: Duration::from_secs(30),
            allow_networks: Vec::new(),
        }
    }
}

/// The client networks a listener accepts (`allow_networks`); empty allows every client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(Vec<Network>);

/// An `allow_networks` entry that is neither an address nor a CIDR network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("allow_networks: {0:?} is not an address or CIDR network")]
pub struct AllowListError(pub String);

impl AllowList {
    /// Parse the entries of an `allow_networks` key.
    pub fn parse(entries: &[String]) -> Result<AllowList, AllowListError> {
        entries.iter().map(|s| s.parse().map_err(|_| AllowListError(s.clone()))).collect::<Result<_, _>>().map(AllowList)
    }

    /// Whether a client at `ip` may connect (an IPv4-mapped address counts as IPv4).
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.0.is_empty() || self.0.iter().any(|n| n.contains(ip))
    }
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let config = Config::from_toml(&text, path)?;
        config.validate(path)?;
        Ok(config)
    }

    /// Parse TOML text; `path` only names the source in errors. Does not validate.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// Check the values; pure, no I/O. `path` only names the source in errors.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message: message.to_string(),
        };
        let url = self.database.url.as_str();
        if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid("database.url", "must start with sqlite: or postgres://"));
        }
        let ingest = &self.ingest;
        if ingest.max_batch == 0 || ingest.max_batch > 10_000 {
            return Err(invalid("ingest.max_batch", "must be between 1 and 10000"));
        }
        if ingest.commit_delay > Duration::from_secs(1) {
            return Err(invalid("ingest.commit_delay", "must be at most 1s (it delays every acknowledgement)"));
        }
        let lmtp = &ingest.lmtp;
        if lmtp.max_message_size < 1024 {
            return Err(invalid("ingest.lmtp.max_message_size", "must be at least 1024 bytes"));
        }
        if lmtp.max_connections == 0 {
            return Err(invalid("ingest.lmtp.max_connections", "must be at least 1"));
        }
        if lmtp.max_recipients == 0 {
            return Err(invalid("ingest.lmtp.max_recipients", "must be at least 1"));
        }
        if lmtp.idle_timeout < Duration::from_secs(1) {
            return Err(invalid("ingest.lmtp.idle_timeout", "must be at least 1s"));
        }
        if lmtp.transaction_timeout < Duration::from_secs(1) {
            return Err(invalid("ingest.lmtp.transaction_timeout", "must be at least 1s"));
        }
        AllowList::parse(&lmtp.allow_networks).map_err(|e| invalid("ingest.lmtp.allow_networks", &e.to_string()))?;
        if !(0.0..=1.0).contains(&self.classify.min_confidence) {
            return Err(invalid("classify.min_confidence", "must be between 0 and 1"));
        }
        crate::lifecycle::validate_categories(&self.classify.categories)
            .map_err(|e| invalid("classify.categories", &e.to_string()))?;
        if self.classify.min_new_labels == 0 {
            return Err(invalid("classify.min_new_labels", "must be at least 1"));
        }
        self.digest.validate().map_err(|e| invalid("digest", &e.to_string()))?;
        if !self.digest.to.is_empty() {
            self.smtp.validate().map_err(|e| invalid("smtp", &e.to_string()))?;
        }
        if let Some(metrics) = &self.metrics {
            metrics.validate().map_err(|e| invalid("metrics.listen", &e.to_string()))?;
        }
        if let Some(spf) = &self.spf {
            spf.validate().map_err(|e| invalid("spf", &e.to_string()))?;
            self.report.spf.validate().map_err(|e| invalid("report.spf", &e.to_string()))?;
            if self.report.spf.enabled {
                self.smtp.validate().map_err(|e| invalid("smtp", &e.to_string()))?;
            }
        }
        Ok(())
    }
}

/// Why a duration text was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: write a whole number and a unit, e.g. \"2ms\", \"30s\", \"5m\", \"1h\"")]
pub struct DurationError(String);

/// Parse a duration written as a whole number and a unit: `2ms`, `30s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| DurationError(s.to_string()))?;
    Ok(match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(DurationError(s.to_string())),
    })
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let c = Config::from_toml(text, Path::new("test.toml"))?;
        c.validate(Path::new("test.toml"))?;
        Ok(c)
    }

    #[test]
    fn empty_file_gives_safe_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.database.url, "sqlite://rebound.db");
        assert_eq!(c.ingest.lmtp.listen.to_string(), "127.0.0.1:2424");
        assert_eq!(c.ingest.commit_delay, Duration::from_millis(2));
    }

    #[test]
    fn unknown_key_is_an_error_naming_file_and_key() {
        let e = parse("[ingest.lmtp]\nlisten = \"127.0.0.1:25\"\nmax_mesage_size = 5\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("test.toml"), "{msg}");
        assert!(msg.contains("max_mesage_size"), "{msg}");
    }

    #[test]
    fn unknown_section_is_an_error() {
        let e = parse("[databse]\nurl = \"sqlite://x.db\"\n").unwrap_err();
        assert!(e.to_string().contains("databse"), "{e}");
    }

    #[test]
    fn durations_take_units() {
        let c = parse("[ingest]\ncommit_delay = \"5ms\"\n[ingest.lmtp]\nidle_timeout = \"2m\"\nshutdown_grace = \"10s\"\n")
            .unwrap();
        assert_eq!(c.ingest.commit_delay, Duration::from_millis(5));
        assert_eq!(c.ingest.lmtp.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.ingest.lmtp.transaction_timeout, Duration::from_secs(600), "the default");
        assert_eq!(c.ingest.lmtp.shutdown_grace, Duration::from_secs(10));
        let e = parse("[ingest]\ncommit_delay = \"5 fortnights\"\n").unwrap_err();
        assert!(e.to_string().contains("commit_delay"), "{e}");
    }

    #[test]
    fn validate_names_the_bad_key() {
        let e = parse("[ingest]\nmax_batch = 0\n").unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { key: "ingest.max_batch", .. }), "{e}");
        let e = parse("[database]\nurl = \"mysql://x\"\n").unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { key: "database.url", .. }), "{e}");
        let e = parse("[ingest.lmtp]\nmax_connections = 0\n").unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { key: "ingest.lmtp.max_connections", .. }), "{e}");
        let e = parse("[ingest.lmtp]\ntransaction_timeout = \"0s\"\n").unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { key: "ingest.lmtp.transaction_timeout", .. }), "{e}");
        let e = parse("[[classify.categories]]\nname = \"mailboxfull\"\n").unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { key: "classify.categories", .. }), "{e}");
        let e = parse("[classify]\nmin_confidence = 1.5\n").unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { key: "classify.min_confidence", .. }), "{e}");
    }

    #[test]
    fn custom_categories_in_either_form_and_a_retrain_schedule() {
        let list = parse(
            "[classify]\nretrain_schedule = \"every 6h\"\nmin_new_labels = 5\n\
             [[classify.categories]]\nname = \"gmail-throttle\"\ndescription = \"Gmail rate limiting\"\n\
             [[classify.categories]]\nname = \"needs-whitelisting\"\nhard_bounce = true\n",
        )
        .unwrap();
        let table = parse(
            "[classify.categories.gmail-throttle]\ndescription = \"Gmail rate limiting\"\n\
             [classify.categories.needs-whitelisting]\nhard_bounce = true\n",
        )
        .unwrap();
        assert_eq!(list.classify.categories, table.classify.categories);
        assert_eq!(list.classify.categories[1].name, "needs-whitelisting");
        assert!(list.classify.categories[1].hard_bounce && !list.classify.categories[0].hard_bounce);
        assert_eq!(list.classify.retrain_schedule.to_string(), "every 21600s");
        assert_eq!(list.classify.min_new_labels, 5);
        let e = parse("[classify.categories.x]\nhard = true\n").unwrap_err();
        assert!(e.to_string().contains("hard"), "{e}");
        let e = parse("[classify]\nretrain_schedule = \"often\"\n").unwrap_err();
        assert!(e.to_string().contains("retrain schedule"), "{e}");
    }

    #[test]
    fn allow_networks_are_checked_and_match_clients() {
        let c = parse("[ingest.lmtp]\nallow_networks = [\"127.0.0.0/8\", \"::1\", \"192.0.2.7\"]\n").unwrap();
        let allow = AllowList::parse(&c.ingest.lmtp.allow_networks).unwrap();
        assert!(allow.allows("127.0.0.2".parse().unwrap()));
        assert!(allow.allows("::ffff:192.0.2.7".parse().unwrap()));
        assert!(!allow.allows("192.0.2.8".parse().unwrap()));
        assert!(!allow.allows("::2".parse().unwrap()));
        assert!(AllowList::default().allows("203.0.113.1".parse().unwrap()), "empty allows everyone");
        let e = parse("[ingest.lmtp]\nallow_networks = [\"10.0.0.0/33\"]\n").unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { key: "ingest.lmtp.allow_networks", .. }), "{e}");
    }

    #[test]
    fn bad_listen_address_is_an_error() {
        let e = parse("[ingest.lmtp]\nlisten = \"localhost\"\n").unwrap_err();
        assert!(e.to_string().contains("listen"), "{e}");
    }

    #[test]
    fn shipped_config_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/rebound.toml");
        let c = Config::load(&path).unwrap();
        let digest = DigestConfig {
            schedule: "daily 07:00".parse().unwrap(),
            out_dir: Some(PathBuf::from("digests")),
            ..DigestConfig::default()
        };
        let defaults =
            Config { spf: Some(SpfConfig::default()), metrics: Some(MetricsConfig::default()), digest, ..Config::default() };
        assert_eq!(c, defaults, "config/rebound.toml should spell out the defaults (and a daily digest)");
    }

    #[test]
    fn spf_runs_only_with_its_section_and_its_keys_are_checked() {
        assert_eq!(parse("").unwrap().spf, None);
        let c = parse("[spf]\nlisten = \"127.0.0.1:0\"\n[report.spf]\nenabled = false\n").unwrap();
        assert_eq!(c.spf.unwrap().listen, "127.0.0.1:0");
        let e = parse("[report.spf]\nenabeld = true\n").unwrap_err();
        assert!(e.to_string().contains("enabeld"), "{e}");
        let e = parse("[dkim.main]\ndomain = \"example.com\"\n").unwrap_err();
        assert!(e.to_string().contains("selector"), "{e}");
    }
}
