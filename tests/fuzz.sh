#!/bin/sh
# Run each cargo-fuzz target of fuzz/ for a bounded time and report executions and crashes per target.
#
#   tests/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60 s; all targets)
#
# Stable Rust is enough: cargo-fuzz passes -Z flags, which RUSTC_BOOTSTRAP=1 allows; `-s none` builds
# without a sanitizer (libFuzzer still stops on any panic, which is what we look for in safe Rust). The
# first build instruments every dependency and takes long (about 15-30 min on 2 busy cores); later runs
# reuse fuzz/target. Inputs start from the repository's own fixtures (tests/fixtures/...); new coverage is
# kept in fuzz/corpus/TARGET (not committed). A crash leaves fuzz/artifacts/TARGET/crash-*: copy it to
# tests/fixtures/fuzz/TARGET/ (tests/fuzz_regressions.rs replays that folder) and fix the bug.
# Exit status: 0 when no target crashed, 1 otherwise.
set -eu
seconds=${1:-60}
[ $# -gt 0 ] && shift
targets=${*:-parse_message policy_request config_toml}
root=$(cd "$(dirname "$0")/.." && pwd)
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz
cd "$root/fuzz"
export RUSTC_BOOTSTRAP=1
status=0
for target in $targets; do
    case $target in
        parse_message) seeds="$root/tests/fixtures/ingest $root/tests/fixtures/fuzz/parse_message" ;;
        policy_request) seeds="$root/tests/fixtures/fuzz/policy_request" ;;
        config_toml) seeds="$root/config $root/tests/fixtures/fuzz/config_toml" ;;
        *) echo "unknown target $target" >&2; exit 2 ;;
    esac
    existing=""
    for s in $seeds; do [ -d "$s" ] && existing="$existing $s"; done
    mkdir -p "corpus/$target"
    log="$root/fuzz/$target.log"
    # shellcheck disable=SC2086 # $existing is a list of directories
    if cargo fuzz run -s none "$target" "corpus/$target" $existing -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 >"$log" 2>&1; then
        result=ok
    else
        result=CRASH
        status=1
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    crashes=$(ls "artifacts/$target" 2>/dev/null | grep -c -E '^(crash|oom|timeout|leak)-' || true)
    echo "$target: $result, $execs executions in ${seconds} s, $crashes crash/oom/timeout artifacts (log: fuzz/$target.log)"
done
exit $status
