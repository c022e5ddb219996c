//! The classifier learning from its users, through the real binary on a real database (SQLite, and Postgres
//! when REBOUND_TEST_POSTGRES_URL is set): `rebound label` and labels inserted with SQL, custom categories
//! declared in the configuration, `rebound model train --from-db` (a custom category learned from a handful
//! of labelled bounces, a worse candidate refused), `rebound model list|rollback`, the retraining lock on
//! Postgres, and a corrupt model version in the database stopping `serve`.
//!
//! Training runs the real trainer on the repository's corpus (models/corpus/diagnostics.jsonl) with fewer
//! epochs than a release model, so the debug-build tests stay within a few minutes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{postgres_schema, scalar, sqlite_url};

/// Epochs of the test trainings (the shipped model uses 20).
const EPOCHS: &str = "6";

fn rebound(args: &[&str]) -> Output {
    Command::new(common::bin())
        .args(args)
        .env_remove("REBOUND_DB")
        .env_remove("RUST_LOG")
        .env("USER", "tester")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn ok(o: Output) -> Output {
    assert_eq!(code(&o), 0, "{}", text(&o));
    o
}

/// A DSN for one recipient with this status and diagnostic text.
fn dsn(recipient: &str, status: &str, diagnostic: &str) -> String {
    format!(
        "Return-Path: <>\r\nFrom: Mail Delivery System <MAILER-DAEMON@mail.example.com>\r\n\
         To: newsletter@example.com\r\nSubject: Undelivered Mail Returned to Sender\r\n\
         Message-ID: <dsn-{recipient}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n\
         --B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\r\n\
         --B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mail.example.com\r\n\r\n\
         Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: {status}\r\n\
         Remote-MTA: dns; mx.example.net\r\nDiagnostic-Code: smtp; {diagnostic}\r\n\r\n--B--\r\n"
    )
}

/// Ingest one DSN per (recipient, status, text) and return the bounce ids in the same order.
fn ingest(dir: &Path, url: &str, bounces: &[(String, &str, String)]) -> Vec<i64> {
    let mail = dir.join(format!("mail-{}", bounces.first().map_or("none", |b| b.0.as_str())));
    std::fs::create_dir_all(&mail).unwrap();
    for (i, (rcpt, status, diag)) in bounces.iter().enumerate() {
        std::fs::write(mail.join(format!("{i}.eml")), dsn(rcpt, status, diag)).unwrap();
    }
    ok(rebound(&["ingest", "--db", url, mail.to_str().unwrap()]));
    bounces
        .iter()
        .map(|(rcpt, _, _)| scalar(url, &format!("SELECT id FROM bounces WHERE recipient = '{rcpt}'")))
        .collect()
}

/// A config file with the database, the shipped model and these extra `[classify]` lines.
fn config(dir: &Path, url: &str, classify_extra: &str) -> PathBuf {
    let path = dir.join("rebound.toml");
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    std::fs::write(
        &path,
        format!(
            "[database]\nurl = \"{url}\"\n[ingest.lmtp]\nlisten = \"127.0.0.1:0\"\n[classify]\nmodel = \"{}\"\n{classify_extra}\n",
            models.display()
        ),
    )
    .unwrap();
    path
}

/// `rebound model train --from-db` with `epochs` (default [`EPOCHS`]), a training corpus (default the
/// repository's) and `extra` arguments.
fn train_with(config: &Path, epochs: Option<&str>, corpus: Option<&Path>, extra: &[&str]) -> Output {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/corpus/diagnostics.jsonl");
    let corpus = corpus.unwrap_or(&repository);
    let mut cmd = Command::new(common::bin());
    cmd.args(["model", "train", "--from-db", "--no-shared", "--config"])
        .arg(config)
        .args(["--epochs", epochs.unwrap_or(EPOCHS), "--train-corpus"])
        .arg(corpus)
        .args(extra)
        .env_remove("REBOUND_DB")
        .env_remove("RUST_LOG");
    cmd.output().unwrap()
}

fn train_from_db(config: &Path, extra: &[&str]) -> Output {
    train_with(config, None, None, extra)
}

fn classify(url: &str, diagnostic: &str) -> serde_json::Value {
    let out = ok(rebound(&["classify", "--db", url, "--text", diagnostic]));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

fn active_version(url: &str) -> i64 {
    scalar(url, "SELECT COALESCE(MAX(id), 0) FROM model_versions WHERE active")
}

/// Run `each` on a fresh SQLite file, then on a fresh Postgres schema when there is one.
fn on_both_backends(test: &str, each: impl Fn(&Path, &str)) {
    let dir = tempfile::tempdir().unwrap();
    each(dir.path(), &sqlite_url(dir.path()));
    if let Some(pg) = postgres_schema(test) {
        let dir = tempfile::tempdir().unwrap();
        each(dir.path(), &pg.url);
    }
}

/// Diagnostics of a custom category no built-in reason covers: a partner allow list.
fn allow_list_texts(n: usize, offset: usize) -> Vec<String> {
    const PARTNERS: &[&str] = &["Contoso", "Fabrikam", "Northwind", "Tailspin", "Litware", "Adatum", "Woodgrove", "Wingtip", "Proseware", "Lucerne"];
    (0..n)
        .map(|i| {
            let partner = PARTNERS[(i + offset) % PARTNERS.len()];
            format!(
                "550 5.7.1 Sender is not on the partner allow list of {partner}; ask postmaster@{}.example to add \
                 your domain to the partner allow list",
                partner.to_lowercase()
            )
        })
        .collect()
}

#[test]
fn labels_are_validated_and_record_who_and_when() {
    on_both_backends("labels_validated", |dir, url| {
        let ids = ingest(dir, url, &[
            ("a@example.net".into(), "5.2.2", "552 5.2.2 Mailbox full".into()),
            ("b@example.net".into(), "5.7.1", "550 5.7.1 Sender is not on the partner allow list".into()),
        ]);
        let id = ids[0].to_string();
        let out = rebound(&["label", "--db", url, &id, "no-such-reason"]);
        assert_eq!(code(&out), 64, "{}", text(&out));
        assert!(text(&out).contains("unknown reason or category \"no-such-reason\""), "{}", text(&out));
        let out = rebound(&["label", "--db", url, "999999", "mailboxfull"]);
        assert_eq!(code(&out), 65, "{}", text(&out));
        assert!(text(&out).contains("no bounce 999999"), "{}", text(&out));
        assert_eq!(scalar(url, "SELECT COUNT(*) FROM labels"), 0, "refused labels leave nothing behind");

        let out = ok(rebound(&["label", "--db", url, "--by", "alice", &id, "mailboxfull"]));
        assert!(String::from_utf8_lossy(&out.stdout).contains("labelled mailboxfull by alice"), "{}", text(&out));
        assert_eq!(scalar(url, &format!("SELECT COUNT(*) FROM labels WHERE bounce_id = {id} AND labelled_by = 'alice' \
                                        AND reason = 'mailboxfull' AND created_at IS NOT NULL")), 1);
        assert_eq!(scalar(url, &format!("SELECT COUNT(*) FROM bounces WHERE id = {id} AND decided_by = 'user'")), 1);

        // A custom category exists once the configuration declares it; `--by` defaults to $USER.
        let other = ids[1].to_string();
        assert_eq!(code(&rebound(&["label", "--db", url, &other, "partner-allow-list"])), 64);
        let cfg = config(dir, url, "[[classify.categories]]\nname = \"partner-allow-list\"\ndescription = \"ask to be allow-listed\"\n");
        ok(rebound(&["label", "--config", cfg.to_str().unwrap(), &other, "partner-allow-list"]));
        assert_eq!(scalar(url, &format!("SELECT COUNT(*) FROM labels WHERE bounce_id = {other} AND labelled_by = 'tester'")), 1);
        assert_eq!(scalar(url, "SELECT COUNT(*) FROM categories WHERE name = 'partner-allow-list' AND NOT builtin"), 1);

        // A category may not take a built-in reason's name.
        let bad = config(dir, url, "[classify.categories.userunknown]\nhard_bounce = true\n");
        let out = rebound(&["label", "--config", bad.to_str().unwrap(), &other, "userunknown"]);
        assert_eq!(code(&out), 64, "{}", text(&out));
        assert!(text(&out).contains("clashes with the built-in reason"), "{}", text(&out));

        // The SQL path: the foreign key refuses an unknown reason.
        let refused = common::block_on(async {
            let sql = format!("INSERT INTO labels (bounce_id, reason, labelled_by) VALUES ({other}, 'no-such', 'bob')");
            if url.starts_with("sqlite:") {
                let pool = sqlx::SqlitePool::connect(url).await.unwrap();
                sqlx::query(&sql).execute(&pool).await.is_err()
            } else {
                let pool = sqlx::PgPool::connect(url).await.unwrap();
                sqlx::query(&sql).execute(&pool).await.is_err()
            }
        });
        assert!(refused, "an INSERT naming an unknown reason must fail");
    });
}

#[test]
fn a_custom_category_is_learned_and_versions_roll_back() {
    on_both_backends("custom_category", |dir, url| {
        let cfg = config(dir, url, "[[classify.categories]]\nname = \"partner-allow-list\"\nhard_bounce = false\n");
        let texts = allow_list_texts(8, 0);
        let bounces: Vec<(String, &str, String)> =
            texts.iter().enumerate().map(|(i, t)| (format!("p{i}@example.net"), "5.7.1", t.clone())).collect();
        let ids = ingest(dir, url, &bounces);
        // Too few examples: a clear message naming the category and the count needed.
        for id in &ids[..3] {
            ok(rebound(&["label", "--config", cfg.to_str().unwrap(), &id.to_string(), "partner-allow-list"]));
        }
        let out = train_from_db(&cfg, &[]);
        assert_eq!(code(&out), 65, "{}", text(&out));
        assert!(text(&out).contains("\"partner-allow-list\" has 3 labelled bounces; at least 5"), "{}", text(&out));
        assert_eq!(scalar(url, "SELECT COUNT(*) FROM model_versions"), 0);

        // Label the rest: four more by command, one by SQL.
        for id in &ids[3..7] {
            ok(rebound(&["label", "--config", cfg.to_str().unwrap(), &id.to_string(), "partner-allow-list"]));
        }
        let sql = format!("INSERT INTO labels (bounce_id, reason, labelled_by) VALUES ({}, 'partner-allow-list', 'sql')", ids[7]);
        common::block_on(async {
            if url.starts_with("sqlite:") {
                sqlx::query(&sql).execute(&sqlx::SqlitePool::connect(url).await.unwrap()).await.unwrap();
            } else {
                sqlx::query(&sql).execute(&sqlx::PgPool::connect(url).await.unwrap()).await.unwrap();
            }
        });
        let unseen = "550 5.7.1 Your domain is not on the partner allow list of Initech; ask postmaster@initech.example \
                      to add you to their partner allow list";
        let before = classify(url, unseen);
        assert_ne!(before["reason"], "partner-allow-list", "the shipped model cannot know the category");

        let started = Instant::now();
        let out = ok(train_from_db(&cfg, &[]));
        eprintln!("train --from-db took {:.1}s", started.elapsed().as_secs_f64());
        assert!(String::from_utf8_lossy(&out.stdout).contains("promoted"), "{}", text(&out));
        let v1 = active_version(url);
        assert!(v1 > 0, "the candidate is active: {}", text(&out));
        let after = classify(url, unseen);
        assert_eq!(after["reason"], "partner-allow-list", "{after}");
        assert_eq!(after["hard_bounce"], false);

        // A second version from two more labels; then roll back step by step.
        let more: Vec<(String, &str, String)> = allow_list_texts(2, 8)
            .into_iter()
            .enumerate()
            .map(|(i, t)| (format!("q{i}@example.net"), "5.7.1", t))
            .collect();
        for id in ingest(dir, url, &more) {
            ok(rebound(&["label", "--config", cfg.to_str().unwrap(), &id.to_string(), "partner-allow-list"]));
        }
        let out = ok(train_from_db(&cfg, &["--seed", "7"]));
        let v2 = active_version(url);
        assert!(v2 > v1, "second version promoted: {}", text(&out));
        let list = ok(rebound(&["model", "list", "--db", url]));
        let listed = String::from_utf8_lossy(&list.stdout).into_owned();
        assert!(listed.lines().any(|l| l.starts_with('*') && l.contains(&format!(" {v2} "))), "{listed}");

        let out = ok(rebound(&["model", "rollback", "--db", url]));
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("model version {v1}")), "{}", text(&out));
        assert_eq!(active_version(url), v1);
        assert_eq!(classify(url, unseen)["reason"], "partner-allow-list");
        let out = ok(rebound(&["model", "rollback", "--db", url]));
        assert!(String::from_utf8_lossy(&out.stdout).contains("shipped model"), "{}", text(&out));
        assert_eq!(active_version(url), 0);
        assert_eq!(classify(url, unseen)["reason"], before["reason"], "the shipped model classifies again");
        let out = rebound(&["model", "rollback", "--db", url, "999"]);
        assert_eq!(code(&out), 64, "{}", text(&out));
        ok(rebound(&["model", "rollback", "--db", url, &v2.to_string()]));
        assert_eq!(active_version(url), v2);
    });
}

#[test]
fn a_worse_candidate_is_recorded_but_not_promoted() {
    on_both_backends("worse_candidate", |dir, url| {
        let cfg = config(dir, url, "");
        // Texts that differ in words, not only in numbers (numbers are masked, so those would be one group).
        const FULL: &[&str] = &[
            "552 5.2.2 The email account that you tried to reach is over quota",
            "552 5.2.2 Mailbox full",
            "552 5.2.2 Quota exceeded: the recipient's mailbox is full",
            "552 5.2.2 User's mailbox is over its storage limit",
            "552 5.2.2 Mailbox size limit exceeded",
            "552 5.2.2 The recipient's inbox is out of storage space",
        ];
        const GONE: &[&str] = &[
            "550 5.1.1 The email account that you tried to reach does not exist",
            "550 5.1.1 User unknown",
            "550 5.1.1 Recipient address rejected: User unknown in virtual mailbox table",
            "550 5.1.1 No such user here",
            "550 5.1.1 Mailbox does not exist",
            "550 5.1.1 Invalid recipient: this address is not known here",
        ];
        let mut bounces = Vec::new();
        for (i, (full, gone)) in FULL.iter().zip(GONE).enumerate() {
            bounces.push((format!("full{i}@example.net"), "5.2.2", full.to_string()));
            bounces.push((format!("gone{i}@example.net"), "5.1.1", gone.to_string()));
        }
        let ids = ingest(dir, url, &bounces);
        for (id, (_, status, _)) in ids.iter().zip(&bounces) {
            let reason = if *status == "5.2.2" { "mailboxfull" } else { "userunknown" };
            ok(rebound(&["label", "--db", url, &id.to_string(), reason]));
        }
        // A candidate that learned next to nothing: three texts, all spam, one epoch.
        let tiny = dir.join("tiny.jsonl");
        let rows: Vec<String> = ["message rejected as spam", "spam detected", "looks like spam to us"]
            .iter()
            .map(|t| serde_json::json!({"text": t, "status": "5.7.1", "reply_code": 550, "reason": "spamdetected"}).to_string())
            .collect();
        std::fs::write(&tiny, rows.join("\n")).unwrap();
        let out = ok(train_with(&cfg, Some("1"), Some(&tiny), &[]));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(stdout.contains("not promoted") && stdout.contains("worse than"), "{}", text(&out));
        assert_eq!(scalar(url, "SELECT COUNT(*) FROM model_versions"), 1, "the candidate is recorded");
        assert_eq!(active_version(url), 0, "and the shipped model stays in use");
        let listed = String::from_utf8_lossy(&ok(rebound(&["model", "list", "--db", url])).stdout).into_owned();
        assert!(listed.contains("not promoted") && listed.contains("no version is active"), "{listed}");
    });
}

#[test]
fn a_corrupt_model_version_stops_serve_classify_and_ingest() {
    on_both_backends("corrupt_version", |dir, url| {
        let cfg = config(dir, url, "");
        ok(rebound(&["db", "migrate", "--db", url]));
        common::block_on(async {
            let sql = "INSERT INTO model_versions (trained_on, metrics, weights, active) VALUES ('test', '{}', $1, true)";
            let blob: &[u8] = b"RBMODEL1 but then garbage that is no model at all, and no checksum either..........";
            if url.starts_with("sqlite:") {
                sqlx::query(sql).bind(blob).execute(&sqlx::SqlitePool::connect(url).await.unwrap()).await.unwrap();
            } else {
                sqlx::query(sql).bind(blob).execute(&sqlx::PgPool::connect(url).await.unwrap()).await.unwrap();
            }
        });
        let mut child = Command::new(common::bin())
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("serve started with a corrupt model version");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        assert_eq!(code(&out), 64, "{}", text(&out));
        assert!(text(&out).contains("corrupt model version"), "{}", text(&out));
        let out = rebound(&["classify", "--db", url, "--text", "550 5.1.1 no such user"]);
        assert_eq!(code(&out), 64, "{}", text(&out));
        let mail = dir.join("one.eml");
        std::fs::write(&mail, dsn("x@example.net", "5.1.1", "550 5.1.1 no such user")).unwrap();
        let out = rebound(&["ingest", "--db", url, mail.to_str().unwrap()]);
        assert_eq!(code(&out), 75, "{}", text(&out));
        assert_eq!(scalar(url, "SELECT COUNT(*) FROM messages"), 0, "nothing stored without its classification");
        // Rolling back to the shipped model lets everything start again.
        ok(rebound(&["model", "rollback", "--db", url]));
        ok(rebound(&["ingest", "--db", url, mail.to_str().unwrap()]));
    });
}

#[test]
fn only_one_process_retrains_at_a_time_on_postgres() {
    let Some(pg) = postgres_schema("retrain_lock") else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &pg.url, "");
    ok(rebound(&["db", "migrate", "--db", &pg.url]));
    common::block_on(async {
        let pool = sqlx::PgPool::connect(&pg.url).await.unwrap();
        let mut conn = pool.acquire().await.unwrap();
        let sql = "SELECT pg_try_advisory_lock(hashtext('rebound.model_retrain'), hashtext(current_schema()))";
        let held: bool = sqlx::query_scalar(sql).fetch_one(&mut *conn).await.unwrap();
        assert!(held);
        let out = train_from_db(&cfg, &[]);
        assert_eq!(code(&out), 75, "{}", text(&out));
        assert!(text(&out).contains("another process is retraining"), "{}", text(&out));
        sqlx::query("SELECT pg_advisory_unlock_all()").execute(&mut *conn).await.unwrap();
    });
    // Once the lock is free, training goes ahead (no labels yet: recorded, not promoted).
    let out = ok(train_with(&cfg, Some("1"), None, &[]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not promoted"), "{}", text(&out));
}

#[test]
fn serve_retrains_on_its_schedule_and_switches_to_a_better_model() {
    on_both_backends("serve_retrains", |dir, url| {
        // A smaller built-in corpus than the repository's keeps the debug-build training short.
        let repository = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/corpus/diagnostics.jsonl")).unwrap();
        let corpus = dir.join("corpus.jsonl");
        std::fs::write(&corpus, repository.lines().take(200).collect::<Vec<_>>().join("\n")).unwrap();
        let category = "[[classify.categories]]\nname = \"partner-allow-list\"\n";
        let cfg = config(dir, url, category);
        let bounces: Vec<(String, &str, String)> =
            allow_list_texts(8, 0).into_iter().enumerate().map(|(i, t)| (format!("s{i}@example.net"), "5.7.1", t)).collect();
        for id in ingest(dir, url, &bounces) {
            ok(rebound(&["label", "--config", cfg.to_str().unwrap(), &id.to_string(), "partner-allow-list"]));
        }
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let classify = format!(
            "\n[classify]\nmodel = \"{}\"\nretrain_schedule = \"every 1s\"\nmin_new_labels = 8\ntrain_corpus = \"{}\"\n{category}",
            models.display(),
            corpus.display()
        );
        let server = common::Server::launch(dir, url, "", &classify, "rebound=info");
        let deadline = Instant::now() + Duration::from_secs(600);
        while scalar(url, "SELECT COUNT(*) FROM model_versions") == 0 {
            assert!(Instant::now() < deadline, "no retraining within 600 s; log:\n{}", server.log());
            std::thread::sleep(Duration::from_millis(500));
        }
        assert!(active_version(url) > 0, "the candidate is promoted; log:\n{}", server.log());
        // Wait for the log line that follows the install, then deliver a bounce of the new category.
        while !server.log().contains("retrained from the labels") {
            assert!(Instant::now() < deadline, "log:\n{}", server.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        let unseen = "550 5.7.1 Your domain is not on the partner allow list of Initech; ask postmaster@initech.example \
                      to add you to their partner allow list";
        let mut client = common::Client::ready(server.addr);
        let replies = client.deliver("", &["bounces@example.com"], dsn("new@example.net", "5.7.1", unseen).as_bytes());
        assert_eq!(replies[0].code, 250, "{replies:?}");
        assert_eq!(
            scalar(url, "SELECT COUNT(*) FROM bounces WHERE recipient = 'new@example.net' AND reason = 'partner-allow-list' \
                         AND decided_by = 'model'"),
            1,
            "log:\n{}",
            server.log()
        );
        // With no new labels it does not train again.
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(scalar(url, "SELECT COUNT(*) FROM model_versions"), 1, "log:\n{}", server.log());
    });
}
