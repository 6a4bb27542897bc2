#!/bin/sh
# Build the libFuzzer targets (in build-fuzz, with clang) if needed and run each one for N
# seconds (default 20) on a temporary copy of its seed corpus. Fails on the first crash, leak,
# timeout or sanitizer report, keeping the reproducer and the log.
#
#   fuzz/run.sh [seconds] [target...]      e.g. fuzz/run.sh 60 fuzz_pjson
#
# WRENN_FUZZ_BUILD overrides the build directory; WRENN_FUZZ_JOBS runs that many fuzzing
# processes per target (default 1).
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-20}
[ $# -gt 0 ] && shift
targets=${*:-"fuzz_envelope fuzz_pjson fuzz_multipart fuzz_gz fuzz_envd_decode fuzz_mem_map"}
build=${WRENN_FUZZ_BUILD:-$root/build-fuzz}
jobs=${WRENN_FUZZ_JOBS:-1}

case $secs in
    ''|*[!0-9]*) echo "usage: $0 [seconds] [target...]" >&2; exit 2 ;;
esac

if [ ! -f "$build/build.ninja" ]; then
    CC=clang meson setup "$build" "$root" -Dfuzz=true
fi
ninja_targets=
for t in $targets; do ninja_targets="$ninja_targets fuzz/$t"; done
# shellcheck disable=SC2086 # one word per target
ninja -C "$build" $ninja_targets

work=$(mktemp -d /tmp/wrenn-fuzz-XXXXXX)
failed=
for t in $targets; do
    corpus="$work/$t/corpus"
    mkdir -p "$corpus" "$work/$t/artifacts"
    cp "$root/fuzz/corpus/$t/"* "$corpus/"
    echo "== $t: ${secs}s on $(ls "$corpus" | wc -l) seeds"
    # -timeout: one input taking over 10 s is a hang; rss limit: a bomb is a bug too. Parallel
    # jobs write fuzz-<n>.log into the current directory, so run inside the scratch directory.
    par=
    [ "$jobs" -gt 1 ] && par="-jobs=$jobs -workers=$jobs"
    # shellcheck disable=SC2086 # $par is zero or two words
    if (cd "$work/$t" && "$build/fuzz/$t" "$corpus" -max_total_time="$secs" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 $par \
        -artifact_prefix="$work/$t/artifacts/") >"$work/$t/log" 2>&1; then
        grep -E '^stat::number_of_executed_units|^stat::new_units_added' "$work/$t/log" |
            sed "s/^/   /" || true
    else
        echo "!! $t failed; log: $work/$t/log, reproducer(s) in $work/$t/artifacts/"
        grep -E 'ERROR|invariant failed|runtime error|SUMMARY' "$work/$t/log" | head -5 |
            sed "s/^/   /" || true
        failed="$failed $t"
    fi
done

if [ -n "$failed" ]; then
    echo "FAILED:$failed"
    exit 1
fi
rm -rf "$work"
echo "all fuzz targets ran clean"
