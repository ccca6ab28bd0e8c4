#!/usr/bin/env bash
# Runs every fuzz target for SECONDS seconds each, starting from its committed seeds.
#
#   fuzz/run.sh SECONDS
#
# Exits non-zero if a target crashes (the reproducer is in fuzz/artifacts/TARGET/), and 0 with
# a "skipped" line when the nightly toolchain or cargo-fuzz is missing, so CI can call it
# unconditionally. Builds with debug assertions, so integer overflow counts as a crash.
set -euo pipefail

if [[ $# -ne 1 || ! $1 =~ ^[0-9]+$ || $1 -eq 0 ]]; then
    echo "usage: $0 SECONDS   (seconds per target, at least 1)" >&2
    exit 2
fi
seconds=$1
fuzz_dir=$(cd "$(dirname "$0")" && pwd)
cd "$fuzz_dir/.."

if ! cargo +nightly --version >/dev/null 2>&1 || ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "skipped: nightly toolchain or cargo-fuzz not installed"
    exit 0
fi

# The largest seed is a 64 KiB block in fragments with session framing (~67 KB).
max_len=70000
targets=$(cargo +nightly fuzz list)
if [[ -z $targets ]]; then
    echo "no fuzz targets found" >&2
    exit 1
fi

cargo +nightly fuzz build -O --debug-assertions

failed=()
for target in $targets; do
    seeds="$fuzz_dir/seeds/$target"
    corpus="$fuzz_dir/corpus/$target"
    mkdir -p "$corpus"
    if [[ ! -d $seeds ]] || [[ -z $(ls -A "$seeds") ]]; then
        echo "fuzz target $target has no seeds in $seeds" >&2
        exit 1
    fi
    echo "=== $target: ${seconds}s"
    # The corpus directory comes first: libFuzzer writes new inputs there, never to seeds/.
    if ! cargo +nightly fuzz run -O --debug-assertions "$target" "$corpus" "$seeds" -- \
        -max_total_time="$seconds" -max_len="$max_len" -print_final_stats=1; then
        failed+=("$target")
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "crashed: ${failed[*]} (reproducers in $fuzz_dir/artifacts/)" >&2
    exit 1
fi
echo "all fuzz targets ran ${seconds}s each without a crash"
