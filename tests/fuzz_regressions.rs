//! Replays the inputs kept under `tests/fixtures/fuzz/TARGET/`, and the seed folders `tests/fuzz.sh` starts
//! each target from, through the same calls as the cargo-fuzz targets of `fuzz/` (`parse_message`,
//! `policy_request`, `config_toml`), so a crasher found by the fuzzer stays fixed without the fuzzer (which
//! needs an instrumented build). A crash input is kept under its libFuzzer name (`crash-*`).

use std::path::{Path, PathBuf};

use rebound::config::Config;
use rebound::spf::policy::PolicyRequest;

/// Every file of `tests/fixtures/fuzz/TARGET/` and of the seed folders (relative to the crate), sorted;
/// there must be some.
fn inputs(target: &str, seeds: &[&str]) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fuzz = format!("tests/fixtures/fuzz/{target}");
    let mut out = Vec::new();
    for dir in seeds.iter().copied().chain([fuzz.as_str()]) {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else { continue };
        for path in entries.filter_map(|e| Some(e.ok()?.path())).filter(|p| p.is_file()) {
            let data = std::fs::read(&path).unwrap();
            out.push((path, data));
        }
    }
    out.sort();
    assert!(!out.is_empty(), "no inputs for {target}");
    out
}

#[test]
fn parse_message_inputs_do_not_panic() {
    for (path, data) in inputs("parse_message", &["tests/fixtures/ingest"]) {
        let parsed = rebound::parse::parse(&data);
        let _ = parsed.kind.as_str();
        serde_json::to_string(&parsed).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[test]
fn policy_request_inputs_do_not_panic() {
    for (_, data) in inputs("policy_request", &[]) {
        let text = String::from_utf8_lossy(&data);
        let req = PolicyRequest::from_lines(text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)));
        for name in ["request", "protocol_state", "instance", "client_address", "helo_name", "sender", "recipient"] {
            let _ = req.get(name);
        }
    }
}

#[test]
fn config_toml_inputs_do_not_panic() {
    let path = Path::new("fuzz.toml");
    for (file, data) in inputs("config_toml", &["config"]) {
        let Ok(text) = std::str::from_utf8(&data) else { continue };
        match Config::from_toml(text, path) {
            Ok(config) => drop(config.validate(path)),
            // The shipped config must load; any other input may be refused, but not panic.
            Err(e) => assert!(!file.ends_with("config/rebound.toml"), "{e}"),
        }
    }
}
