//! Postfix policy delegation requests (`name=value` lines) through `PolicyRequest::from_lines`, then the
//! attribute look-ups the policy server makes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rebound::spf::policy::PolicyRequest;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let req = PolicyRequest::from_lines(text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)));
    for name in ["request", "protocol_state", "instance", "client_address", "helo_name", "sender", "recipient"] {
        let _ = req.get(name);
    }
});
