#!/bin/sh
# Build the cargo-fuzz targets of fuzz/ once, run each for a bounded time, report executions and crashes.
#
#   tests/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60 s; all targets)
#
# Environment:
#   REBOUND_FUZZ_PROFILE  dev (default) or release. dev is an instrumented debug build: on 2 cores it
#                         builds several times faster than release (cargo-fuzz builds release with one
#                         codegen unit) and runs fewer executions per second; docs/guarantees.md §6 has
#                         the figures. Use release for long runs by hand. One input may run 30 s (dev)
#                         or 10 s (release) before libFuzzer reports it as a timeout.
#   CARGO_TARGET_DIR      where to build (default fuzz/target). Nothing is shared with `cargo test`'s
#                         target/: every crate is built with the fuzzer's flags, host-side ones included.
#
# Stable Rust is enough: cargo-fuzz passes -Z flags, which RUSTC_BOOTSTRAP=1 allows; `-s none` builds
# without a sanitizer (libFuzzer still stops on any panic, which is what we look for in safe Rust; the dev
# profile also turns an integer overflow into a panic). Inputs start from the repository's own fixtures
# (tests/fixtures/...); new coverage is kept in fuzz/corpus/TARGET (not committed). A crash leaves
# fuzz/artifacts/TARGET/crash-*: copy it to tests/fixtures/fuzz/TARGET/ (tests/fuzz_regressions.rs replays
# that folder on every `cargo test`) and fix the bug.
# Exit status: 0 when no target crashed, 1 otherwise (2 for a usage or build error).
set -eu
seconds=${1:-60}
[ $# -gt 0 ] && shift
targets=${*:-parse_message policy_request config_toml}
root=$(cd "$(dirname "$0")/.." && pwd)
case ${REBOUND_FUZZ_PROFILE:-dev} in
    dev) profile=--dev; per_input=30 ;;
    release) profile=--release; per_input=10 ;;
    *) echo "REBOUND_FUZZ_PROFILE must be dev or release" >&2; exit 2 ;;
esac
target_dir=${CARGO_TARGET_DIR:-$root/fuzz/target}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cd "$root/fuzz"
export RUSTC_BOOTSTRAP=1

started=$(date +%s)
# shellcheck disable=SC2086 # $targets is a list of names
for target in $targets; do
    cargo fuzz build -s none "$profile" --target-dir "$target_dir" "$target" || exit 2
done
echo "fuzz: built $targets (${REBOUND_FUZZ_PROFILE:-dev}) in $(( $(date +%s) - started )) s"

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
    before=$(ls "artifacts/$target" 2>/dev/null | wc -l)
    # shellcheck disable=SC2086 # $existing is a list of directories
    if cargo fuzz run -s none "$profile" --target-dir "$target_dir" "$target" "corpus/$target" $existing -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout="$per_input" -rss_limit_mb=2048 >"$log" 2>&1; then
        result=ok
    else
        result=CRASH
        status=1
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
    edges=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*' || echo "?")
    units=$(ls "corpus/$target" | wc -l)
    found=$(( $(ls "artifacts/$target" 2>/dev/null | wc -l) - before ))
    echo "fuzz: $target: $result, $execs executions in $seconds s ($(( execs / seconds ))/s), $edges edges," \
         "$units corpus units, $found new crash/oom/timeout artifacts (log: fuzz/$target.log)"
    if [ "$result" = CRASH ]; then
        grep -m 5 -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written to' "$log" | sed "s/^/fuzz: $target: /" || true
    fi
done
exit $status
