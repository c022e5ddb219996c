//! The metrics server over a real loopback socket: `/metrics` in the Prometheus text format with the values
//! recorded through the registry API, `/healthz` following the database, and the HTTP edges (404, 405,
//! HEAD, oversized requests, shutdown).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use rebound::metrics::{self, MetricsConfig, ReportEvent};
use rebound::parse::Kind;
use rebound::store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// A running server and the means to stop it.
struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(store: Option<Store>) -> Server {
    let config = MetricsConfig { listen: "127.0.0.1:0".parse().unwrap() };
    let listener = metrics::bind(&config).await.expect("bind loopback");
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(metrics::serve(listener, store, async {
        stopped.await.ok();
    }));
    Server { addr, stop: Some(stop), task }
}

/// Send `request` raw and return (status code, headers text, body).
async fn http(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("response within 10 s")
        .expect("read response");
    let response = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status code");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("Content-Length");
    if !request.starts_with(b"HEAD") {
        assert_eq!(length, body.len(), "Content-Length matches the body");
    }
    (status, head.to_string(), body.to_string())
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    http(addr, format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).await
}

/// Parse an exposition: every sample line `name{labels} value`, every family declared by HELP and TYPE.
fn samples(body: &str) -> HashMap<String, f64> {
    let sample = regex::Regex::new(r#"^([a-z_]+)(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? (-?[0-9.e+]+|\+Inf)$"#).unwrap();
    let mut declared = Vec::new();
    let mut out = HashMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            declared.push(parts.next().unwrap().to_string());
            assert!(matches!(parts.next(), Some("counter" | "gauge" | "histogram")), "{line}");
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let caps = sample.captures(line).unwrap_or_else(|| panic!("not a sample line: {line:?}"));
        let name = &caps[1];
        let family = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
        assert!(declared.iter().any(|d| d == name || d == family), "{name} has no TYPE line before it");
        let key = format!("{}{}", name, caps.get(2).map_or("", |m| m.as_str()));
        out.insert(key, caps[4].parse().unwrap());
    }
    out
}

#[tokio::test]
async fn metrics_endpoint_serves_what_was_recorded() {
    let server = start(None).await;
    let before = samples(&get(server.addr, "/metrics").await.2);
    let at = |s: &HashMap<String, f64>, k: &str| s.get(k).copied().unwrap_or(0.0);

    for _ in 0..3 {
        metrics::ingested(Kind::Dsn);
    }
    let empty = rebound::parse::parse(b"");
    metrics::record_parsed(&empty, &rebound::classify::classify_all(&empty));
    metrics::classified("userunknown", 0.95);
    metrics::classified("userunknown", 0.6);
    metrics::classified("gmail-throttle", 0.3);
    metrics::spf_result("mail_from", "fail");
    metrics::spf_result("bogus", "fail");
    metrics::report(ReportEvent::Sent);
    metrics::report(ReportEvent::Suppressed);
    metrics::set_queue_depth(7);
    metrics::observe_lmtp(Duration::from_millis(3));
    metrics::observe_lmtp(Duration::from_millis(30));
    metrics::observe_policy(Duration::from_micros(200));

    let (status, head, body) = get(server.addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    let after = samples(&body);
    let delta = |k: &str| at(&after, k) - at(&before, k);
    assert_eq!(delta(r#"rebound_ingested_total{kind="dsn"}"#), 3.0);
    assert_eq!(delta(r#"rebound_ingested_total{kind="unparsed"}"#), 1.0);
    assert_eq!(delta(r#"rebound_parse_failures_total{cause="empty"}"#), 1.0);
    assert_eq!(delta(r#"rebound_classifications_total{reason="userunknown",confidence="high"}"#), 1.0);
    assert_eq!(delta(r#"rebound_classifications_total{reason="userunknown",confidence="medium"}"#), 1.0);
    assert_eq!(delta(r#"rebound_classifications_total{reason="custom",confidence="low"}"#), 1.0);
    assert_eq!(delta(r#"rebound_spf_results_total{identity="mail_from",result="fail"}"#), 1.0);
    assert!(!body.contains("bogus"), "labels outside the vocabulary are dropped");
    assert_eq!(delta(r#"rebound_reports_total{event="sent"}"#), 1.0);
    assert_eq!(delta(r#"rebound_reports_total{event="suppressed"}"#), 1.0);
    assert_eq!(at(&after, "rebound_report_queue_depth"), 7.0);
    assert_eq!(delta("rebound_lmtp_duration_seconds_count"), 2.0);
    assert_eq!(delta(r#"rebound_lmtp_duration_seconds_bucket{le="0.005"}"#), 1.0, "3 ms");
    assert_eq!(delta(r#"rebound_lmtp_duration_seconds_bucket{le="0.05"}"#), 2.0, "3 ms and 30 ms, cumulative");
    assert!((delta("rebound_lmtp_duration_seconds_sum") - 0.033).abs() < 1e-6);
    assert_eq!(delta(r#"rebound_policy_duration_seconds_bucket{le="0.00025"}"#), 0.0);
    assert_eq!(delta(r#"rebound_policy_duration_seconds_bucket{le="0.0005"}"#), 1.0);
    // Buckets are cumulative and end at the count.
    let mut last = 0.0;
    for le in ["0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "5", "+Inf"] {
        let v = at(&after, &format!("rebound_lmtp_duration_seconds_bucket{{le=\"{le}\"}}"));
        assert!(v >= last, "bucket {le} decreases");
        last = v;
    }
    assert_eq!(last, at(&after, "rebound_lmtp_duration_seconds_count"));

    drop(server.stop);
    server.task.await.unwrap();
}

#[tokio::test]
async fn healthz_follows_the_database_and_http_edges_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("h.db").display())).await.unwrap();
    let mut server = start(Some(store.clone())).await;

    let (status, _, body) = get(server.addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(get(server.addr, "/nope").await.0, 404);
    assert_eq!(get(server.addr, "/metrics?x=1").await.0, 200, "query strings are ignored");
    assert_eq!(http(server.addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await.0, 405);
    let (status, head, body) = http(server.addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!((status, body.as_str()), (200, ""));
    assert!(head.contains("Content-Length: ") && !head.contains("Content-Length: 0"));
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Fill: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 8_300));
    assert_eq!(http(server.addr, &huge).await.0, 400, "oversized request heads are refused");

    store.close().await;
    let (status, _, body) = get(server.addr, "/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("database:"), "{body}");

    server.stop.take().map(|s| s.send(()));
    server.task.await.unwrap();
    assert!(TcpStream::connect(server.addr).await.is_err(), "the port is closed after shutdown");
}

#[tokio::test]
async fn refuses_to_listen_beyond_loopback() {
    let config = MetricsConfig { listen: "0.0.0.0:0".parse().unwrap() };
    let err = metrics::bind(&config).await.expect_err("non-loopback address");
    assert!(err.to_string().contains("not a loopback address"), "{err}");
}
