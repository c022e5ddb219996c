//! `rebound::parse` against the shared corpora (read in place from ../shared/corpus, never copied):
//! - bounces: a recipient is found in >= 97% of the files with labelled recipients; agreement of the
//!   enhanced status and reply code with the labels is printed and held above a floor;
//! - arf: every field of expected.jsonl matches.
//!
//! Each test skips with a printed reason when its corpus is absent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rebound::parse::{Kind, parse};
use serde_json::Value;

fn corpus(sub: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus").join(sub);
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("skipping: corpus {} not found", dir.display());
        None
    }
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line in {}: {e}", path.display())))
        .collect()
}

fn pct(n: usize, d: usize) -> f64 {
    if d == 0 { 100.0 } else { 100.0 * n as f64 / d as f64 }
}

/// RFC 3463 codes as an MTA would write them; the analyser that labelled the corpus also uses private
/// `X.0.9YY`-style codes of its own, which no parser can find in a message.
fn is_rfc3463(status: &str) -> bool {
    let parts: Vec<&str> = status.split('.').collect();
    match parts.as_slice() {
        [c, s, d] => {
            let (Ok(s), Ok(d)) = (s.parse::<u32>(), d.parse::<u32>()) else { return false };
            matches!(*c, "2" | "4" | "5") && s <= 7 && !(s == 0 && d >= 900)
        }
        _ => false,
    }
}

#[test]
fn bounce_corpus_recipients_status_and_reply_codes() {
    let Some(dir) = corpus("bounces") else { return };
    let labels_path = dir.join("labels.jsonl");
    if !labels_path.is_file() {
        println!("skipping: {} not found", labels_path.display());
        return;
    }
    let labels = read_jsonl(&labels_path);
    // file -> rows with a labelled recipient (recipient_index >= 1), by index
    let mut by_file: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for row in &labels {
        if row["recipient_index"].as_u64().unwrap_or(0) >= 1 && row["mta_module"].is_string() {
            let file = row["file"].as_str().expect("file").to_string();
            by_file.entry(file).or_default().push(row);
        }
    }
    assert!(!by_file.is_empty(), "labels.jsonl has no labelled recipients");

    let (mut files, mut found) = (0, 0);
    let (mut status_total, mut status_ok) = (0, 0);
    let (mut reply_total, mut reply_ok) = (0, 0);
    let mut misses = Vec::new();
    let mut status_misses = Vec::new();
    let mut reply_misses = Vec::new();
    let (mut count_same, mut count_more) = (0, 0);
    for (file, rows) in &by_file {
        let path = dir.join(file);
        let Ok(raw) = std::fs::read(&path) else {
            println!("missing corpus file {}", path.display());
            continue;
        };
        files += 1;
        let parsed = parse(&raw);
        assert!(
            !parsed.parse_error.as_deref().is_some_and(|e| e.contains("internal error")),
            "{file}: reached the panic guard"
        );
        if parsed.recipients.iter().any(|r| !r.recipient.is_empty()) {
            found += 1;
        } else {
            misses.push(format!("{file} ({:?}: {:?})", parsed.kind, parsed.parse_error));
        }
        let labelled = rows.iter().filter_map(|r| r["recipient_index"].as_u64()).max().unwrap_or(0) as usize;
        if parsed.recipients.len() == labelled {
            count_same += 1;
        } else if parsed.recipients.len() > labelled {
            count_more += 1;
            println!("more recipients than labelled: {file}: {} > {labelled}", parsed.recipients.len());
        }
        for row in rows {
            let idx = row["recipient_index"].as_u64().unwrap_or(1) as usize;
            let ours = parsed.recipients.get(idx - 1);
            if let Some(expected) = row["expected_status"].as_str().filter(|s| is_rfc3463(s)) {
                status_total += 1;
                let got = ours.and_then(|r| r.status.as_deref());
                if got == Some(expected) {
                    status_ok += 1;
                } else {
                    status_misses.push(format!("{file}#{idx}: expected {expected}, got {got:?}"));
                }
            }
            if let Some(expected) = row["expected_replycode"].as_str().and_then(|s| s.parse::<u16>().ok()) {
                reply_total += 1;
                let got = ours.and_then(|r| r.reply_code);
                if got == Some(expected) {
                    reply_ok += 1;
                } else {
                    reply_misses.push(format!("{file}#{idx}: expected {expected}, got {got:?}"));
                }
            }
        }
    }
    println!("recipient found: {found}/{files} files = {:.1}%", pct(found, files));
    println!("status agreement: {status_ok}/{status_total} = {:.1}% (RFC 3463 labels)", pct(status_ok, status_total));
    println!("reply code agreement: {reply_ok}/{reply_total} = {:.1}%", pct(reply_ok, reply_total));
    for m in &misses {
        println!("no recipient: {m}");
    }
    println!(
        "recipient count equals the labelled count in {count_same}/{files} files; more than labelled in {count_more}"
    );
    for m in &status_misses {
        println!("status differs: {m}");
    }
    for m in &reply_misses {
        println!("reply code differs: {m}");
    }
    assert!(files > 0, "no corpus file could be read");
    assert!(pct(found, files) >= 97.0, "recipient found in only {:.1}% of files", pct(found, files));
    assert!(pct(status_ok, status_total) >= 90.0, "status agreement fell to {:.1}%", pct(status_ok, status_total));
    assert!(pct(reply_ok, reply_total) >= 85.0, "reply code agreement fell to {:.1}%", pct(reply_ok, reply_total));
}

#[test]
fn files_without_a_bounce_are_not_reported_as_bounces() {
    let Some(dir) = corpus("bounces") else { return };
    let not_dir = dir.join("emails/not");
    let Ok(entries) = std::fs::read_dir(&not_dir) else {
        println!("skipping: {} not found", not_dir.display());
        return;
    };
    let mut n = 0;
    for entry in entries.flatten() {
        let raw = std::fs::read(entry.path()).expect("read");
        let p = parse(&raw);
        println!("{}: {:?} {:?}", entry.path().display(), p.kind, p.parse_error);
        assert!(!matches!(p.kind, Kind::Dsn | Kind::Arf), "{} taken for a report", entry.path().display());
        n += 1;
    }
    assert!(n > 0, "no files in {}", not_dir.display());
}

fn opt_str(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

#[test]
fn arf_corpus_matches_expected_fields() {
    let Some(dir) = corpus("arf") else { return };
    let expected_path = dir.join("expected.jsonl");
    if !expected_path.is_file() {
        println!("skipping: {} not found", expected_path.display());
        return;
    }
    let expected = read_jsonl(&expected_path);
    let mut ok = 0;
    let mut failures = Vec::new();
    for e in &expected {
        let file = e["file"].as_str().expect("file");
        let raw = std::fs::read(dir.join(file)).unwrap_or_else(|err| panic!("cannot read {file}: {err}"));
        let p = parse(&raw);
        let mut diffs = Vec::new();
        match (e["feedback_type"].as_str(), &p.feedback) {
            // A report without an ARF part is kept as unparsed, not mistaken for an auto-reply or a bounce.
            (None, None) if p.kind != Kind::Unparsed => diffs.push(format!("kind {:?} for a report without ARF", p.kind)),
            (None, None) => {}
            (None, Some(_)) => diffs.push("a report was found where there is none".to_string()),
            (Some(_), None) => diffs.push(format!("no report found ({:?}: {:?})", p.kind, p.parse_error)),
            (Some(ft), Some(f)) => {
                let mut check = |name: &str, want: Value, got: Value| {
                    if want != got {
                        diffs.push(format!("{name}: expected {want}, got {got}"));
                    }
                };
                check("kind", Value::from("arf"), Value::from(p.kind.as_str()));
                check("feedback_type", Value::from(ft), Value::from(f.feedback_type.as_str()));
                check("auth_failure", e["auth_failure"].clone(), f.auth_failure.clone().into());
                check("source_ip", e["source_ip_addr"].clone(), f.source_ip.clone().into());
                check("reported_domain", str_list(&e["reported_domain"]).into(), f.reported_domains.clone().into());
                check("original_mail_from", opt_str(&e["original_mail_from"]).into(), f.original_mail_from.clone().into());
                check("original_rcpt_to", str_list(&e["original_rcpt_to"]).into(), f.original_rcpt_to.clone().into());
                check("arrival_date", e["arrival_date"].clone(), f.arrival_date.clone().into());
                check("reporting_mta", e["reporting_mta"].clone(), f.reporting_mta.clone().into());
                check("user_agent", e["user_agent"].clone(), f.user_agent.clone().into());
                check("version", e["version"].clone(), f.version.clone().into());
                check("incidents", e["incidents"].clone(), f.incidents.into());
                check("delivery_result", e["delivery_result"].clone(), f.delivery_result.clone().into());
                check("identity_alignment", e["identity_alignment"].clone(), f.identity_alignment.clone().into());
                check("spf_dns", str_list(&e["spf_dns"]).into(), f.spf_dns.clone().into());
                check("has_original", e["has_original"].clone(), f.has_original.into());
                if f.fields.first().map(|(n, _)| n.to_ascii_lowercase()).as_deref() != Some("feedback-type")
                    && !f.fields.iter().any(|(n, _)| n.eq_ignore_ascii_case("feedback-type"))
                {
                    diffs.push("fields list lacks Feedback-Type".to_string());
                }
            }
        }
        if diffs.is_empty() {
            ok += 1;
        } else {
            failures.push(format!("{file}: {}", diffs.join("; ")));
        }
    }
    println!("ARF fields match: {ok}/{}", expected.len());
    for f in &failures {
        println!("ARF mismatch: {f}");
    }
    assert!(!expected.is_empty());
    assert!(failures.is_empty(), "{} ARF file(s) differ", failures.len());
}

#[test]
fn mutated_corpus_files_never_reach_the_panic_guard() {
    let Some(dir) = corpus("bounces") else { return };
    let mut files = Vec::new();
    let mut stack = vec![dir.join("emails")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut runs = 0;
    for path in files.iter().step_by(3) {
        let raw = std::fs::read(path).expect("read corpus file");
        if raw.is_empty() {
            continue;
        }
        let mut variants: Vec<Vec<u8>> = Vec::new();
        for _ in 0..4 {
            variants.push(raw[..(next() as usize) % raw.len()].to_vec());
        }
        let mut flipped = raw.clone();
        for _ in 0..(raw.len() / 50).max(1) {
            let at = (next() as usize) % flipped.len();
            flipped[at] = next() as u8;
        }
        variants.push(flipped);
        for v in &variants {
            let p = parse(v);
            runs += 1;
            assert!(
                !p.parse_error.as_deref().is_some_and(|e| e.contains("internal error")),
                "{}: a mutated copy reached the panic guard",
                path.display()
            );
        }
    }
    println!("mutated inputs parsed: {runs}");
    assert!(runs > 0);
}

#[test]
fn lf_crlf_and_cr_copies_of_a_message_parse_alike() {
    let Some(dir) = corpus("bounces") else { return };
    let labels_path = dir.join("labels.jsonl");
    if !labels_path.is_file() {
        println!("skipping: {} not found", labels_path.display());
        return;
    }
    // Copies of one message with other line endings share content_norm_sha256 (see the corpus README).
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in read_jsonl(&labels_path) {
        if let (Some(h), Some(f)) = (row["content_norm_sha256"].as_str(), row["file"].as_str()) {
            let files = groups.entry(h.to_string()).or_default();
            if !files.iter().any(|x| x == f) {
                files.push(f.to_string());
            }
        }
    }
    let mut compared = 0;
    let mut differing = Vec::new();
    for files in groups.values().filter(|f| f.len() > 1) {
        let summaries: Vec<(String, String)> = files
            .iter()
            .filter_map(|f| std::fs::read(dir.join(f)).ok().map(|raw| (f.clone(), raw)))
            .map(|(f, raw)| {
                let p = parse(&raw);
                let rcpts: Vec<String> = p
                    .recipients
                    .iter()
                    .map(|r| format!("{} {:?} {:?} {:?} {:?}", r.recipient, r.status, r.reply_code, r.action, r.smtp_command))
                    .collect();
                (f, format!("{:?} {}", p.kind, rcpts.join("; ")))
            })
            .collect();
        compared += 1;
        if summaries.windows(2).any(|w| w[0].1 != w[1].1) {
            differing.push(format!("{summaries:?}"));
        }
    }
    println!("copies compared: {compared} groups, {} differ", differing.len());
    for d in &differing {
        println!("differs: {d}");
    }
    assert!(compared > 0, "no LF/CRLF/CR copies found in labels.jsonl");
    assert!(differing.is_empty(), "{} group(s) of copies parse differently", differing.len());
}
