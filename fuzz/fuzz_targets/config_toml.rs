//! Config files: TOML text through `Config::from_toml` and, when it parses, the pure `validate`.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use rebound::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("fuzz.toml");
    if let Ok(config) = Config::from_toml(text, path) {
        let _ = config.validate(path);
    }
});
