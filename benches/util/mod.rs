//! Helpers shared by the benchmarks.

/// The 1, 5 and 15 minute load averages from /proc/loadavg (Linux), or `unknown`: the machine is shared, and
/// the load printed beside the figures says how much to trust them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_string())
}
