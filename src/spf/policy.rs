//! The Postfix policy delegation server (SMTPD_POLICY_README): `check_policy_service
//! inet:127.0.0.1:10045`. A request is `name=value` lines ended by an empty line; the answer is
//! `action=...` and an empty line; a connection carries any number of requests.
//!
//! Per SMTP transaction (`instance`), the first request runs both checks (HELO first, then MAIL FROM,
//! each unless its policy is `disable`) and answers:
//! - `strict` and `fail`: `550 5.7.23 ...` (RFC 7372); `strict` and `temperror`: `451 4.7.24 ...`; the
//!   same answer is repeated for the transaction's other recipients;
//! - otherwise `PREPEND Received-SPF: ...` (RFC 7208 §9.1) for the MAIL FROM identity (HELO when MAIL
//!   FROM is disabled), then `DUNNO` for further recipients, and `PREPEND Authentication-Results: ...`
//!   (RFC 8601) on the first request of the DATA or END-OF-MESSAGE stage. Postfix takes one PREPEND per
//!   answer, so Authentication-Results needs `check_policy_service` in `smtpd_data_restrictions` (or
//!   `smtpd_end_of_data_restrictions`) as well as in `smtpd_recipient_restrictions`.
//!
//! Clients in `trusted_networks` get `DUNNO` without a check. Bad input never panics and never stalls the
//! server: a line over 1 MiB or a request over 1 MiB closes the connection, a request must arrive within
//! `[spf] request_timeout_secs` ([`REQUEST_TIMEOUT`] by default) once begun, so a client trickling its
//! request holds a connection no longer than that, an idle connection is closed after [`IDLE_TIMEOUT`], a
//! malformed line makes the request answer `DUNNO`.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, mpsc};

use super::config::{Network, PolicyMode};
use crate::config::AllowList;
use super::{IdentityCheck, Resolver, SpfResult, SpfVerdict, Verifier, headers};

/// Longest line, and longest request, accepted.
pub const MAX_LINE: usize = 1024 * 1024;
/// Most attributes in one request (Postfix sends about 30).
pub const MAX_ATTRIBUTES: usize = 1000;
/// How long a connection may sit idle between requests (Postfix's smtpd_policy_service_max_idle is 300 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(330);
/// How long one request may take to arrive once its first byte came, unless `[spf] request_timeout_secs`
/// says otherwise.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; further ones wait in the listen queue.
pub const MAX_CONNECTIONS: usize = 1024;
/// Longest wait for the commit of a check before answering anyway, with answer-after-store.
pub const STORE_WAIT: Duration = Duration::from_secs(2);
/// Transactions remembered (to answer further recipients and the DATA stage without re-checking).
const MAX_INSTANCES: usize = 16_384;

/// One policy request: its attributes in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRequest {
    attrs: Vec<(String, String)>,
    /// The first malformed line, if any.
    pub malformed: Option<String>,
}

impl PolicyRequest {
    /// Builds a request from `name=value` lines (without the terminating empty line).
    pub fn from_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> PolicyRequest {
        let mut req = PolicyRequest::default();
        for line in lines {
            req.push_line(line);
        }
        req
    }

    fn push_line(&mut self, line: &str) {
        match line.split_once('=') {
            Some((name, value)) if !name.is_empty() && self.attrs.len() < MAX_ATTRIBUTES => {
                self.attrs.push((name.to_string(), value.to_string()));
            }
            _ => {
                if self.malformed.is_none() {
                    self.malformed = Some(line.chars().take(200).collect());
                }
            }
        }
    }

    /// The value of an attribute (the last one when repeated), "" when absent.
    pub fn get(&self, name: &str) -> &str {
        self.attrs.iter().rev().find(|(n, _)| n == name).map_or("", |(_, v)| v.as_str())
    }
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyAction {
    /// No opinion.
    Dunno,
    /// Add a header line (`Name: value`).
    Prepend(String),
    /// A permanent rejection (`550 5.7.23 text`).
    Reject(String),
    /// A temporary rejection (`451 4.7.24 text`).
    Defer(String),
}

impl PolicyAction {
    /// The `action=` value.
    pub fn to_action(&self) -> String {
        match self {
            PolicyAction::Dunno => "DUNNO".to_string(),
            PolicyAction::Prepend(h) => format!("PREPEND {h}"),
            PolicyAction::Reject(t) | PolicyAction::Defer(t) => t.clone(),
        }
    }
}

/// One completed check, for the store (spf_checks) and the report queue.
#[derive(Debug, Clone)]
pub struct CheckEvent {
    /// When.
    pub at: DateTime<Utc>,
    /// The client.
    pub client_ip: IpAddr,
    /// HELO as sent.
    pub helo: String,
    /// MAIL FROM as sent ("" for `<>`).
    pub mail_from: String,
    /// The recipient of the request that triggered the check.
    pub recipient: String,
    /// Postfix queue id, when known.
    pub queue_id: String,
    /// Postfix transaction id.
    pub instance: String,
    /// Both checks.
    pub verdict: SpfVerdict,
    /// What the policy answered.
    pub action: String,
    /// The Received-SPF header line prepended (or that would have been).
    pub received_spf: String,
    /// The Authentication-Results header line.
    pub authentication_results: String,
    /// Notified by the writer once the check is committed, when the answer waits for it
    /// ([`PolicyService::with_answer_after_store`]).
    pub stored: Option<Arc<Notify>>,
}

/// The policy settings (from `[spf]`).
#[derive(Debug, Clone)]
pub struct PolicySettings {
    /// HELO identity policy.
    pub helo: PolicyMode,
    /// MAIL FROM identity policy.
    pub mail_from: PolicyMode,
    /// authserv-id of Authentication-Results.
    pub auth_serv_id: String,
    /// Clients not checked.
    pub trusted: Vec<Network>,
}

/// What is remembered of one transaction.
#[derive(Debug, Clone)]
struct Transaction {
    /// A rejection to repeat, if the check gave one.
    rejection: Option<PolicyAction>,
    authentication_results: String,
    results_sent: bool,
}

#[derive(Default)]
struct Transactions {
    map: HashMap<String, Transaction>,
    order: VecDeque<String>,
}

impl Transactions {
    fn insert(&mut self, key: String, t: Transaction) {
        if self.map.insert(key.clone(), t).is_none() {
            self.order.push_back(key);
            while self.order.len() > MAX_INSTANCES {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

/// The policy service: decides answers, remembers transactions, hands checks to the store.
pub struct PolicyService<R> {
    verifier: Verifier<R>,
    settings: PolicySettings,
    transactions: Mutex<Transactions>,
    events: Option<mpsc::Sender<CheckEvent>>,
    idle_timeout: Duration,
    request_timeout: Duration,
    allow: AllowList,
    answer_after_store: bool,
}

impl<R: Resolver + 'static> PolicyService<R> {
    /// A service; checks are sent to `events` when given (the store writer reads them).
    pub fn new(verifier: Verifier<R>, settings: PolicySettings, events: Option<mpsc::Sender<CheckEvent>>) -> Self {
        PolicyService {
            verifier,
            settings,
            transactions: Mutex::new(Transactions::default()),
            events,
            idle_timeout: IDLE_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
            allow: AllowList::default(),
            answer_after_store: false,
        }
    }

    /// Accepts connections only from `allow` (`[spf] allow_networks`); others are answered
    /// `defer_if_permit` and closed.
    pub fn with_allowed(mut self, allow: AllowList) -> Self {
        self.allow = allow;
        self
    }

    /// When true, a check is answered only once it is committed to the database (at most
    /// [`STORE_WAIT`], then the answer goes anyway and a warning is logged): a crash then loses no
    /// answered check, at the price of a commit's latency per answer. Default false.
    pub fn with_answer_after_store(mut self, on: bool) -> Self {
        self.answer_after_store = on;
        self
    }

    /// Changes how long a connection may idle between requests and how long one request may take to
    /// arrive (defaults [`IDLE_TIMEOUT`], [`REQUEST_TIMEOUT`]).
    pub fn with_timeouts(mut self, idle: Duration, request: Duration) -> Self {
        self.idle_timeout = idle;
        self.request_timeout = request;
        self
    }

    /// Answers one request.
    pub async fn decide(&self, req: &PolicyRequest) -> PolicyAction {
        if req.malformed.is_some() || req.get("request") != "smtpd_access_policy" {
            return PolicyAction::Dunno;
        }
        let Ok(ip) = req.get("client_address").parse::<IpAddr>() else {
            return PolicyAction::Dunno;
        };
        if self.settings.trusted.iter().any(|n| n.contains(ip)) {
            return PolicyAction::Dunno;
        }
        if self.settings.helo == PolicyMode::Disable && self.settings.mail_from == PolicyMode::Disable {
            return PolicyAction::Dunno;
        }
        let late_stage = matches!(req.get("protocol_state").to_ascii_uppercase().as_str(), "DATA" | "END-OF-MESSAGE");
        let instance = req.get("instance");
        if !instance.is_empty() {
            let mut txs = self.transactions.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(t) = txs.map.get_mut(instance) {
                if let Some(r) = &t.rejection {
                    return r.clone();
                }
                if late_stage && !t.results_sent {
                    t.results_sent = true;
                    return PolicyAction::Prepend(t.authentication_results.clone());
                }
                return PolicyAction::Dunno;
            }
        }

        let helo = req.get("helo_name");
        let mail_from = req.get("sender");
        let helo_check = match self.settings.helo {
            PolicyMode::Disable => None,
            _ => Some(self.verifier.check_helo(ip, helo).await),
        };
        let mail_check = match self.settings.mail_from {
            PolicyMode::Disable => None,
            _ => Some(self.verifier.check_mail_from(ip, helo, mail_from).await),
        };
        let receiver = self.verifier.receiver();
        let shown = mail_check.as_ref().or(helo_check.as_ref());
        let received_spf = shown.map(|c| headers::received_spf(c, ip, helo, receiver)).unwrap_or_default();
        let checks: Vec<&IdentityCheck> = helo_check.iter().chain(mail_check.iter()).collect();
        for check in &checks {
            let identity = match check.identity {
                super::Identity::Helo => "helo",
                super::Identity::MailFrom => "mail_from",
            };
            crate::metrics::spf_result(identity, check.result().as_str());
        }
        let authentication_results = headers::authentication_results(&self.settings.auth_serv_id, &checks);

        let rejection = [(helo_check.as_ref(), self.settings.helo), (mail_check.as_ref(), self.settings.mail_from)]
            .into_iter()
            .filter(|(_, mode)| *mode == PolicyMode::Strict)
            .find_map(|(check, _)| check.and_then(|c| rejection(c, ip)));
        let action = rejection.clone().unwrap_or_else(|| PolicyAction::Prepend(received_spf.clone()));

        if !instance.is_empty() {
            let t = Transaction {
                rejection: rejection.clone(),
                authentication_results: authentication_results.clone(),
                results_sent: false,
            };
            self.transactions.lock().unwrap_or_else(|e| e.into_inner()).insert(instance.to_string(), t);
        }
        if let Some(events) = &self.events {
            let event = CheckEvent {
                at: Utc::now(),
                client_ip: ip,
                helo: helo.to_string(),
                mail_from: mail_from.to_string(),
                recipient: req.get("recipient").to_string(),
                queue_id: req.get("queue_id").to_string(),
                instance: instance.to_string(),
                verdict: SpfVerdict { helo: helo_check, mail_from: mail_check },
                action: action.to_action(),
                received_spf,
                authentication_results,
                stored: self.answer_after_store.then(|| Arc::new(Notify::new())),
            };
            let stored = event.stored.clone();
            if events.send(event).await.is_err() {
                tracing::warn!("spf policy: the check store is gone; check not recorded");
            } else if let Some(stored) = stored
                && tokio::time::timeout(STORE_WAIT, stored.notified()).await.is_err()
            {
                tracing::warn!("spf policy: check not committed within {STORE_WAIT:?}; answering anyway");
            }
        }
        action
    }

    /// Serves connections from `listener` until `shutdown` completes.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl std::future::Future<Output = ()>) {
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            tokio::select! {
                _ = &mut shutdown => return,
                accepted = listener.accept() => match accepted {
                    Ok((mut stream, peer)) if !self.allow.allows(peer.ip()) => {
                        tracing::warn!("spf policy: connection from {peer}, outside allow_networks, refused");
                        tokio::spawn(async move {
                            // Postfix reads this as the answer to its first request: a temporary refusal.
                            let refusal = b"action=defer_if_permit Policy service not available to this client\n\n";
                            let _ = tokio::time::timeout(Duration::from_secs(10), stream.write_all(refusal)).await;
                            drop(permit);
                        });
                    }
                    Ok((stream, peer)) => {
                        let service = self.clone();
                        tokio::spawn(async move {
                            match service.connection(stream).await {
                                Err(e @ ConnectionError::SlowRequest) => {
                                    tracing::info!("spf policy: connection from {peer} closed: {e}");
                                }
                                Err(e) => tracing::debug!("spf policy: connection from {peer} closed: {e}"),
                                Ok(()) => {}
                            }
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        tracing::warn!("spf policy: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    async fn connection(&self, stream: TcpStream) -> Result<(), ConnectionError> {
        let _ = stream.set_nodelay(true);
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        loop {
            let Some(req) = read_request(&mut reader, self.idle_timeout, self.request_timeout).await? else {
                return Ok(());
            };
            let started = std::time::Instant::now();
            let action = self.decide(&req).await;
            crate::metrics::observe_policy(started.elapsed());
            let mut out = String::with_capacity(256);
            out.push_str("action=");
            out.push_str(&action.to_action());
            out.push_str("\n\n");
            write.write_all(out.as_bytes()).await?;
        }
    }
}

/// The strict answer to a check, if it calls for one.
fn rejection(check: &IdentityCheck, ip: IpAddr) -> Option<PolicyAction> {
    let what = match check.identity {
        super::Identity::Helo => "HELO",
        super::Identity::MailFrom => "MAIL FROM",
    };
    let sender = printable(&check.sender);
    match check.result() {
        SpfResult::Fail => {
            let why = check.outcome.explanation.as_deref().map(printable).unwrap_or_else(|| {
                format!("{ip} is not allowed to send mail for {}", printable(&check.outcome.domain))
            });
            Some(PolicyAction::Reject(format!("550 5.7.23 SPF fail for {what} {sender}: {why}")))
        }
        SpfResult::TempError => {
            Some(PolicyAction::Defer(format!("451 4.7.24 SPF temporary error for {what} {sender}, try again later")))
        }
        _ => None,
    }
}

fn printable(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(300).collect()
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("line or request longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("idle for longer than the idle timeout")]
    Idle,
    #[error("request not complete within the request timeout")]
    SlowRequest,
}

/// Reads one request; `None` at a clean end of the connection. Waits at most `idle` for its first byte,
/// then at most `request` from that byte to the empty line that ends it.
async fn read_request<S: tokio::io::AsyncRead + Unpin>(
    reader: &mut BufReader<S>,
    idle: Duration,
    request: Duration,
) -> Result<Option<PolicyRequest>, ConnectionError> {
    let mut req = PolicyRequest::default();
    let mut total = 0usize;
    let mut line = Vec::with_capacity(128);
    let first = tokio::time::timeout(idle, reader.fill_buf()).await.map_err(|_| ConnectionError::Idle)??;
    if first.is_empty() {
        return Ok(None); // a clean end between requests
    }
    let deadline = tokio::time::Instant::now() + request;
    loop {
        line.clear();
        let limit = (MAX_LINE + 1 - total) as u64;
        let n = tokio::time::timeout_at(deadline, (&mut *reader).take(limit).read_until(b'\n', &mut line))
            .await
            .map_err(|_| ConnectionError::SlowRequest)??;
        if n == 0 {
            // End of stream inside a request: it is dropped.
            return Ok(None);
        }
        total += n;
        if line.last() != Some(&b'\n') {
            // Either the limit cut the line, or the stream ended inside a request.
            return if total > MAX_LINE { Err(ConnectionError::TooLong) } else { Ok(None) };
        }
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.is_empty() {
            return Ok(Some(req));
        }
        req.push_line(&String::from_utf8_lossy(&line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_parse_and_overlong_lines_are_refused() {
        let input = b"request=smtpd_access_policy\nclient_address=192.0.2.1\r\nsender=a=b@example.com\n\nrest".to_vec();
        let mut r = BufReader::new(&input[..]);
        let req = read_request(&mut r, IDLE_TIMEOUT, REQUEST_TIMEOUT).await.unwrap().unwrap();
        assert_eq!(req.get("client_address"), "192.0.2.1");
        assert_eq!(req.get("sender"), "a=b@example.com");
        assert!(req.malformed.is_none());
        // "rest" without an ending: the connection ends.
        assert!(read_request(&mut r, IDLE_TIMEOUT, REQUEST_TIMEOUT).await.unwrap().is_none());

        let mut long = b"name=".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        long.extend_from_slice(b"\n\n");
        let mut r = BufReader::new(&long[..]);
        assert!(matches!(read_request(&mut r, IDLE_TIMEOUT, REQUEST_TIMEOUT).await, Err(ConnectionError::TooLong)));

        let req = PolicyRequest::from_lines(["request=smtpd_access_policy", "garbage"]);
        assert_eq!(req.malformed.as_deref(), Some("garbage"));
    }

    #[tokio::test]
    async fn a_trickled_request_is_cut_at_the_request_timeout_counted_from_its_first_byte() {
        // The first line itself is dripped: the clock runs from its first byte, not from its end.
        let (mut client, server) = tokio::io::duplex(64);
        let trickle = tokio::spawn(async move {
            for b in b"request=smtpd_access_policy\nsender=a@example.com\n".iter().cycle() {
                if client.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let mut r = BufReader::new(server);
        let started = tokio::time::Instant::now();
        let read = read_request(&mut r, Duration::from_secs(60), Duration::from_millis(200)).await;
        assert!(matches!(read, Err(ConnectionError::SlowRequest)), "{read:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        drop(r);
        trickle.await.unwrap();

        let (_client, server) = tokio::io::duplex(64);
        let mut r = BufReader::new(server);
        let read = read_request(&mut r, Duration::from_millis(100), Duration::from_secs(60)).await;
        assert!(matches!(read, Err(ConnectionError::Idle)), "{read:?}");
    }
}
