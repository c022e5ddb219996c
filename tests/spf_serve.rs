//! `spf::server::start`, the one call `rebound serve` makes: it refuses a bad configuration (a DKIM key
//! that is missing or unreadable, a key name without section) before listening, and when started, the
//! policy server answers and the checks reach the database.

mod spf_support;

use std::collections::BTreeMap;
use std::time::Duration;

use rebound::report::config::{ReportSpfConfig, SmtpConfig};
use rebound::report::dkim::{Algorithm, DkimKeyConfig};
use rebound::spf::config::{DnsSetting, SpfConfig};
use rebound::spf::server::{SpfSections, StartError, start};
use rebound::store::Store;
use spf_support::txt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

fn spf(dns: &str) -> SpfConfig {
    SpfConfig { listen: "127.0.0.1:0".into(), dns: DnsSetting::List(vec![dns.into()]), auth_serv_id: "mx.test".into(), ..SpfConfig::default() }
}

#[tokio::test]
async fn bad_dkim_configuration_is_refused_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("r.db").display())).await.unwrap();
    let (_tx, rx) = watch::channel(false);
    let report = ReportSpfConfig { enabled: true, from_address: "r@ours.example".into(), sign: vec!["main".into()], ..ReportSpfConfig::default() };
    let none = BTreeMap::new();
    let smtp = SmtpConfig::default();
    let spf = spf("127.0.0.1:53");
    let sections = SpfSections { spf: &spf, report: &report, dkim: &none, smtp: &smtp };
    assert!(matches!(start(sections, store.clone(), rx.clone()).await, Err(StartError::UnknownKey(k)) if k == "main"));
    let mut keys = BTreeMap::new();
    keys.insert(
        "main".to_string(),
        DkimKeyConfig { domain: "ours.example".into(), selector: "s".into(), key: dir.path().join("absent.pem"), algorithm: Algorithm::Ed25519Sha256 },
    );
    let sections = SpfSections { spf: &spf, report: &report, dkim: &keys, smtp: &smtp };
    let err = start(sections, store, rx).await.unwrap_err().to_string();
    assert!(err.contains("absent.pem"), "{err}");
}

#[tokio::test]
async fn started_it_answers_and_records_checks() {
    let dns = spf_support::start(&[("example.com", txt("v=spf1 ip4:192.0.2.0/24 -all"))]).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("r.db").display())).await.unwrap();
    let (stop, rx) = watch::channel(false);
    let spf = spf(&dns.spec());
    let sections = SpfSections { spf: &spf, report: &ReportSpfConfig::default(), dkim: &BTreeMap::new(), smtp: &SmtpConfig::default() };
    let mut running = start(sections, store.clone(), rx).await.unwrap();
    let (r, mut w) = tokio::net::TcpStream::connect(running.policy_addr).await.unwrap().into_split();
    w.write_all(b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.8\nhelo_name=x.example.net\nsender=a@example.com\ninstance=s1\n\n").await.unwrap();
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await.unwrap();
    assert!(line.starts_with("action=PREPEND Received-SPF: pass"), "{line}");
    let mut n = 0i64;
    for _ in 0..100 {
        n = sqlx::query_scalar("SELECT COUNT(*) FROM spf_checks").fetch_one(store.sqlite_pool().unwrap()).await.unwrap();
        if n == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(n, 2);
    stop.send(true).unwrap();
    // The policy server (the second task) ends on the signal.
    let server = running.tasks.remove(1);
    assert!(tokio::time::timeout(Duration::from_secs(5), server).await.is_ok(), "the policy server stops");
}
