//! Whole raw messages (bounces, DSNs, ARF reports, anything) through `rebound::parse::parse`.
//! libfuzzer-sys aborts on any panic, so a panic inside parse's own `catch_unwind` guard is found too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = rebound::parse::parse(data);
    // Serialize the result the way `rebound parse --format json` does: every field is visited.
    let _ = parsed.kind.as_str();
    let _ = serde_json::to_string(&parsed);
});
