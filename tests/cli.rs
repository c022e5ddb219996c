//! The command line as an operator and an MTA use it: `rebound ingest` (files, directories, Maildir, mbox,
//! stdin), `rebound classify`, `rebound db migrate`, configuration errors and the exit codes 0/64/65/75.
//! Every test runs the real binary against a real SQLite file (and Postgres when
//! REBOUND_TEST_POSTGRES_URL is set).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{count_messages, fixtures, scalar, sqlite_url};

fn rebound(args: &[&str]) -> Output {
    Command::new(common::bin()).args(args).env_remove("REBOUND_DB").env_remove("RUST_LOG").output().unwrap()
}

fn ingest(url: &str, paths: &[&Path]) -> Output {
    let mut cmd = Command::new(common::bin());
    cmd.args(["ingest", "--db", url]).args(paths).env_remove("RUST_LOG");
    cmd.output().unwrap()
}

fn ingest_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(common::bin())
        .arg("ingest")
        .args(args)
        .arg("-")
        .env_remove("REBOUND_DB")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // The child may stop reading early; a broken pipe here is its business, not the test's.
    let _ = stdin.write_all(input);
    drop(stdin);
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

#[test]
fn ingest_files_prints_the_summary_and_stores_each_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let f = fixtures();
    let paths = [f.join("dsn-userunknown.eml"), f.join("qmail-mailboxfull.eml"), f.join("arf-auth-failure.eml")];
    let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    let out = ingest(&url, &refs);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "read 3, stored 3, duplicates 0, unparsed 0, failed 0");
    let source = format!("file:{}", paths[0].display());
    assert_eq!(scalar(&url, &format!("SELECT COUNT(*) FROM messages WHERE source = '{source}' AND kind = 'dsn'")), 1);
    let again = ingest(&url, &refs);
    assert_eq!(code(&again), 0);
    assert_eq!(stdout(&again).trim(), "read 3, stored 0, duplicates 3, unparsed 0, failed 0");
    assert_eq!(count_messages(&url), 3);
}

#[test]
fn ingest_maildir_reads_cur_and_new_but_not_tmp() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let out = ingest(&url, &[&fixtures().join("Maildir")]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "read 2, stored 2, duplicates 0, unparsed 0, failed 0");
    assert_eq!(scalar(&url, "SELECT COUNT(*) FROM messages WHERE source LIKE '%/tmp/%' OR source LIKE '%uidlist%'"), 0);
}

#[test]
fn ingest_directory_recurses_and_counts_duplicates_and_unparsed() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("a/b")).unwrap();
    std::fs::copy(fixtures().join("dsn-userunknown.eml"), tree.join("a/one.eml")).unwrap();
    std::fs::copy(fixtures().join("dsn-userunknown.eml"), tree.join("a/b/same-again.eml")).unwrap();
    std::fs::copy(fixtures().join("binary-garbage.bin"), tree.join("a/b/garbage.bin")).unwrap();
    std::fs::write(tree.join("empty.eml"), b"").unwrap();
    let out = ingest(&url, &[&tree]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "read 4, stored 3, duplicates 1, unparsed 2, failed 0");
}

#[test]
fn ingest_mbox_splits_messages_and_unescapes_from_lines() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let mbox = fixtures().join("mailbox.mbox");
    let out = ingest(&url, &[&mbox]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).starts_with("read 3, stored 3, duplicates 0"), "{}", stdout(&out));
    let first = format!("file:{}#1", mbox.display());
    let raw: Vec<u8> = common::block_on(async {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::query_scalar("SELECT raw FROM messages WHERE source = ?").bind(&first).fetch_one(&pool).await.unwrap()
    });
    let raw = String::from_utf8(raw).unwrap();
    assert!(raw.starts_with("From: Mail Delivery Subsystem"), "the From_ line is not part of the message: {raw}");
    assert!(raw.contains("\nFrom the transcript"), "one '>' removed from '>From ': {raw}");
    assert_eq!(scalar(&url, "SELECT COUNT(*) FROM messages WHERE kind = 'autoreply'"), 1);
}

#[test]
fn ingest_file_over_the_limit_exits_65_and_stores_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let config = dir.path().join("small.toml");
    std::fs::write(&config, format!("[database]\nurl = \"{url}\"\n[ingest.lmtp]\nmax_message_size = 1024\n")).unwrap();
    let big = dir.path().join("big.eml");
    std::fs::write(&big, [b"Subject: big\n\n".as_slice(), &[b'x'; 4000]].concat()).unwrap();
    let small = fixtures().join("qmail-mailboxfull.eml");
    let out = Command::new(common::bin())
        .args(["ingest", "--config"])
        .arg(&config)
        .arg(&big)
        .arg(&small)
        .env_remove("REBOUND_DB")
        .output()
        .unwrap();
    assert_eq!(code(&out), 65, "{}", stderr(&out));
    assert!(stderr(&out).contains("over the limit of 1024 bytes"), "{}", stderr(&out));
    assert!(stderr(&out).contains("big.eml"), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "read 1, stored 1, duplicates 0, unparsed 0, failed 1");
    assert_eq!(count_messages(&url), 1);
}

#[test]
fn ingest_missing_file_exits_65() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let out = ingest(&url, &[&dir.path().join("no-such-file.eml"), &fixtures().join("dsn-userunknown.eml")]);
    assert_eq!(code(&out), 65);
    assert!(stderr(&out).contains("no-such-file.eml"), "{}", stderr(&out));
    assert_eq!(count_messages(&url), 1);
}

#[test]
fn ingest_stdin_stores_one_message_and_recognises_the_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let msg = std::fs::read(fixtures().join("dsn-userunknown.eml")).unwrap();
    let args = ["--db", url.as_str(), "--envelope-from", "", "--envelope-to", "bounces@example.com"];
    let out = ingest_stdin(&args, &msg);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).starts_with("stored as message "), "{}", stdout(&out));
    let again = ingest_stdin(&args, &msg);
    assert_eq!(code(&again), 0, "{}", stderr(&again));
    assert!(stdout(&again).starts_with("already stored as message "), "{}", stdout(&again));
    assert_eq!(scalar(&url, "SELECT COUNT(*) FROM messages WHERE source = 'stdin'"), 1);
}

#[test]
fn ingest_stdin_over_the_limit_exits_65() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let config = dir.path().join("small.toml");
    std::fs::write(&config, format!("[database]\nurl = \"{url}\"\n[ingest.lmtp]\nmax_message_size = 1024\n")).unwrap();
    let out = ingest_stdin(&["--config", config.to_str().unwrap()], &vec![b'x'; 100_000]);
    assert_eq!(code(&out), 65, "{}", stderr(&out));
    assert!(stderr(&out).contains("over the limit"), "{}", stderr(&out));
    assert_eq!(count_messages(&url), 0);
}

#[test]
fn ingest_with_an_unusable_database_exits_75() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/missing-dir/rebound.db", dir.path().display());
    let out = ingest_stdin(&["--db", &url], b"Subject: x\n\nhello\n");
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot open database"), "{}", stderr(&out));
    let out = ingest(&url, &[&fixtures().join("dsn-userunknown.eml")]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    let out = ingest("postgres://rebound:secret@127.0.0.1:1/nothing", &[&fixtures().join("dsn-userunknown.eml")]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    assert!(!stderr(&out).contains("secret"), "the password is never printed: {}", stderr(&out));
}

#[test]
fn db_url_comes_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let out = Command::new(common::bin())
        .args(["ingest"])
        .arg(fixtures().join("qmail-mailboxfull.eml"))
        .env("REBOUND_DB", &url)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(count_messages(&url), 1);
}

#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    assert_eq!(code(&rebound(&[])), 64);
    assert_eq!(code(&rebound(&["ingest"])), 64, "a PATH is required");
    assert_eq!(code(&rebound(&["ingest", "--bogus", "x"])), 64);
    assert_eq!(code(&rebound(&["frobnicate"])), 64);
    let mixed = rebound(&["ingest", "--db", "sqlite://x.db", "-", "file.eml"]);
    assert_eq!(code(&mixed), 64);
    assert!(stderr(&mixed).contains("'-'"), "{}", stderr(&mixed));
    assert_eq!(code(&rebound(&["classify", "--format", "xml", "x"])), 64);
    let help = rebound(&["--help"]);
    assert_eq!(code(&help), 0);
    assert!(stdout(&help).contains("Examples:"), "{}", stdout(&help));
    assert!(stdout(&help).contains("75"), "--help names the exit codes");
    let help = rebound(&["ingest", "--help"]);
    assert!(stdout(&help).contains("Maildir"), "{}", stdout(&help));
}

#[test]
fn config_with_an_unknown_key_exits_64_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("typo.toml");
    std::fs::write(&config, "[ingest.lmtp]\nlisten = \"127.0.0.1:0\"\nmax_mesage_size = 10\n").unwrap();
    for cmd in [&["serve", "--config"][..], &["db", "migrate", "--config"][..]] {
        let out = Command::new(common::bin()).args(cmd).arg(&config).output().unwrap();
        assert_eq!(code(&out), 64, "{cmd:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("typo.toml"), "{}", stderr(&out));
        assert!(stderr(&out).contains("max_mesage_size"), "{}", stderr(&out));
    }
    std::fs::write(&config, "[ingest]\nmax_batch = 0\n").unwrap();
    let out = Command::new(common::bin()).args(["serve", "--config"]).arg(&config).output().unwrap();
    assert_eq!(code(&out), 64);
    assert!(stderr(&out).contains("ingest.max_batch"), "{}", stderr(&out));
    let out = Command::new(common::bin()).args(["serve", "--config"]).arg(dir.path().join("absent.toml")).output().unwrap();
    assert_eq!(code(&out), 64);
    assert!(stderr(&out).contains("absent.toml"), "{}", stderr(&out));
}

#[test]
fn db_migrate_creates_the_schema_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    for _ in 0..2 {
        let out = rebound(&["db", "migrate", "--db", &url]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert!(stdout(&out).contains("up to date"), "{}", stdout(&out));
    }
    assert_eq!(count_messages(&url), 0);
    let out = rebound(&["db", "migrate", "--db", &format!("sqlite://{}/no/such/dir.db", dir.path().display())]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
}

#[test]
fn classify_jsonl_prints_every_field_per_recipient() {
    let out = rebound(&["classify", fixtures().join("dsn-userunknown.eml").to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1);
    let row = &lines[0];
    for field in ["file", "kind", "recipient", "action", "status", "reply_code", "diagnostic", "reason", "hard_bounce",
                  "confidence", "decided_by"] {
        assert!(row.get(field).is_some(), "missing {field}: {row}");
    }
    assert!(row["file"].as_str().unwrap().ends_with("dsn-userunknown.eml"));
    assert_eq!(row["kind"], "dsn");
    assert_eq!(row["recipient"], "nobody@example.net");
    assert_eq!(row["status"], "5.1.1");
    assert_eq!(row["reason"], "userunknown");
    assert_eq!(row["hard_bounce"], true);
}

#[test]
fn classify_mbox_arf_and_garbage() {
    let f = fixtures();
    let out = rebound(&[
        "classify",
        f.join("mailbox.mbox").to_str().unwrap(),
        f.join("arf-auth-failure.eml").to_str().unwrap(),
        f.join("binary-garbage.bin").to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let rows: Vec<serde_json::Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mbox: Vec<_> = rows.iter().filter(|r| r["file"].as_str().unwrap().ends_with("mailbox.mbox")).collect();
    assert_eq!(mbox.iter().map(|r| r["index"].as_u64().unwrap()).max(), Some(3), "{mbox:?}");
    assert!(rows.iter().any(|r| r["kind"] == "arf" && r["reason"] == "feedback"), "{rows:?}");
    let garbage = rows.iter().find(|r| r["file"].as_str().unwrap().ends_with("binary-garbage.bin")).unwrap();
    assert_eq!(garbage["kind"], "unparsed");
    assert!(garbage["recipient"].is_null());
}

#[test]
fn classify_table_and_missing_file() {
    let f = fixtures();
    let out = rebound(&[
        "classify",
        "--format",
        "table",
        f.join("qmail-mailboxfull.eml").to_str().unwrap(),
        "/nonexistent/bounce.eml",
    ]);
    assert_eq!(code(&out), 65, "a missing file is bad input");
    let text = stdout(&out);
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("FILE") && header.contains("RECIPIENT") && header.contains("REASON"), "{text}");
    let row = lines.next().unwrap();
    assert!(row.contains("full@example.org") && row.contains("mailboxfull"), "{text}");
    assert!(stderr(&out).contains("/nonexistent/bounce.eml"));
}

#[test]
fn classify_on_several_threads_prints_what_one_thread_prints_in_the_same_order() {
    let ingest = fixtures();
    let messages = ingest.parent().unwrap().join("messages");
    let missing = ingest.join("missing.eml");
    let paths = [messages.as_path(), missing.as_path(), ingest.as_path()].map(|p| p.to_str().unwrap());
    for format in ["jsonl", "table"] {
        let run = |jobs: &str| {
            let mut args = vec!["classify", "--format", format, "--jobs", jobs];
            args.extend(paths);
            rebound(&args)
        };
        let one = run("1");
        assert_eq!(code(&one), 65, "a missing file is bad input: {}", stderr(&one));
        assert!(stdout(&one).lines().count() > 20, "{}", stdout(&one));
        for jobs in ["2", "5"] {
            let many = run(jobs);
            assert_eq!(code(&many), 65, "{format} --jobs {jobs}: {}", stderr(&many));
            assert_eq!(stdout(&many), stdout(&one), "{format} --jobs {jobs}");
            assert_eq!(stderr(&many), stderr(&one), "{format} --jobs {jobs}");
        }
    }
    assert_eq!(code(&rebound(&["classify", "--jobs", "0", paths[0]])), 64, "--jobs 0 is a usage error");
}

#[test]
fn postgres_ingest_and_migrate() {
    let Some(schema) = common::postgres_schema("cli_pg") else { return };
    let url = schema.url.clone();
    let out = rebound(&["db", "migrate", "--db", &url]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = ingest(&url, &[&fixtures().join("mailbox.mbox"), &fixtures().join("Maildir")]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "read 5, stored 5, duplicates 0, unparsed 0, failed 0");
    let msg = std::fs::read(fixtures().join("dsn-userunknown.eml")).unwrap();
    let out = ingest_stdin(&["--db", &url], &msg);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).starts_with("already stored"), "the Maildir copy is the same message: {}", stdout(&out));
    assert_eq!(count_messages(&url), 5);
}

#[test]
fn classify_text_prints_one_verdict_and_explains_it() {
    let out = rebound(&["classify", "--text", "550 5.1.1 <a@b.example>: Recipient address rejected: User unknown"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let rows: Vec<serde_json::Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["reason"], "userunknown", "{}", rows[0]);
    assert_eq!(rows[0]["hard_bounce"], true);
    assert!(rows[0]["file"].is_null() && rows[0]["recipient"].is_null());
    assert!(rows[0]["diagnostic"].as_str().unwrap().starts_with("550 5.1.1"));
    assert_eq!((rows[0]["reply_code"].as_u64(), rows[0]["status"].as_str()), (Some(550), Some("5.1.1")), "{}", rows[0]);
    let table = rebound(&["classify", "--format", "table", "--text", "452 4.2.2 Mailbox full"]);
    assert_eq!(code(&table), 0);
    assert!(stdout(&table).lines().nth(1).unwrap().contains("mailboxfull"), "{}", stdout(&table));
    let explained = rebound(&["classify", "--explain", "--text", "452 4.2.2 Mailbox full"]);
    let row: serde_json::Value = serde_json::from_str(stdout(&explained).trim()).unwrap();
    assert!(row["explanation"]["features"].as_array().is_some_and(|f| !f.is_empty()), "{row}");
    assert_eq!(code(&rebound(&["classify", "--text", "x", "file.eml"])), 64, "--text and paths exclude each other");
}

#[test]
fn classify_without_a_model_falls_back_to_the_status_codes() {
    let out = rebound(&["classify", "--model", "/nonexistent/models", "--text", "550 5.1.1 user unknown"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let row: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!((row["reason"].as_str(), row["decided_by"].as_str()), (Some("userunknown"), Some("status")));
    assert!(stderr(&out).contains("no model directory"), "{}", stderr(&out));
}

#[test]
fn corrupt_model_stops_serve_with_64_and_ingest_with_75() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    std::fs::write(models.join("config.json"), "{ not json").unwrap();
    let config = dir.path().join("r.toml");
    let url = sqlite_url(dir.path());
    std::fs::write(
        &config,
        format!("[database]\nurl = \"{url}\"\n[ingest.lmtp]\nlisten = \"127.0.0.1:0\"\n[classify]\nmodel = \"{}\"\n", models.display()),
    )
    .unwrap();
    let out = Command::new(common::bin()).args(["serve", "--config"]).arg(&config).output().unwrap();
    assert_eq!(code(&out), 64, "{}", stderr(&out));
    assert!(stderr(&out).contains("model"), "{}", stderr(&out));
    let out = ingest_stdin(&["--config", config.to_str().unwrap()], b"Subject: x\n\nhello\n");
    assert_eq!(code(&out), 75, "{}", stderr(&out));
}

#[test]
fn model_perturb_strips_codes_keeps_the_command_and_names_the_source_row() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.jsonl");
    std::fs::write(
        &corpus,
        concat!(
            r#"{"text": "550 5.1.1 Recipient address rejected: User unknown", "status": "5.1.1", "reply_code": 550, "reason": "userunknown", "smtp_command": "RCPT"}"#,
            "\n",
            r#"{"text": "452 4.2.2 Mailbox is full", "status": "4.2.2", "reply_code": 452, "reason": "mailboxfull"}"#,
            "\n",
        ),
    )
    .unwrap();
    let out_path = dir.path().join("perturbed.jsonl");
    let args = ["model", "perturb", "--in", corpus.to_str().unwrap(), "--out", out_path.to_str().unwrap()];
    let out = rebound(&args);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let written = std::fs::read_to_string(&out_path).unwrap();
    let rows: Vec<serde_json::Value> = written.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    for (row, (reason, command)) in rows.iter().zip([("userunknown", Some("RCPT")), ("mailboxfull", None)]) {
        let text = row["text"].as_str().unwrap();
        assert!(!text.contains("5.1.1") && !text.contains("4.2.2") && !text.contains("550"), "{row}");
        assert!(row["status"].is_null(), "{row}");
        assert_eq!(row["reason"], reason);
        assert_eq!(row["smtp_command"].as_str(), command, "the failed command is not a code: {row}");
    }
    assert_eq!((rows[0]["group"].as_str(), rows[1]["group"].as_str()), (Some("corpus:1"), Some("corpus:2")));
    assert!(rebound(&args).status.success());
    assert_eq!(std::fs::read_to_string(&out_path).unwrap(), written, "deterministic for the seed");
}
