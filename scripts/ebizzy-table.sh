#!/usr/bin/env bash
# Runs the ebizzy example over thread counts and variants and prints the
# README's markdown tables: records/s for BASE (classic), SPF and the
# kernel's own mmap per commit backend (SPF_BACKENDS, default "uffd guard
# mprotect"), and the malloc path for each allocator.
#   scripts/ebizzy-table.sh [seconds per run] [thread counts...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-1}
shift || true
threads=${*:-1 2 4 8 16}
cargo build --release --example ebizzy >/dev/null 2>&1
bin=target/release/examples/ebizzy

rate() { # the records/s of the run named $1 in the output on stdin
    grep -E "^$1" | head -1 | sed -E 's/.*: ([0-9]+) records\/s/\1/'
}

backends=${SPF_BACKENDS:-uffd guard mprotect}
echo "ebizzy on $(nproc) CPUs, kernel $(uname -r), ${secs} s per run, granule 64 KiB"
echo
echo "| backend | flags | threads | BASE | SPF | SPF/BASE | native | SPF/native |"
echo "|---|---|---|---|---|---|---|---|"
for backend in $backends; do
    for flags in "-mTR" "-mTRp"; do
        for t in $threads; do
            if ! out=$(SPF_BACKEND=$backend $bin $flags -t "$t" -S "$secs" --mode both --native 2>&1); then
                echo "| $backend | \`$flags\` | $t | refused: $(grep -m1 spf: <<<"$out") | | | | |"
                continue
            fi
            base=$(rate "BASE" <<<"$out")
            spf=$(rate "SPF" <<<"$out")
            native=$(rate "native" <<<"$out")
            ratio=$(awk -v a="$spf" -v b="$base" 'BEGIN { printf "%.2f", a / b }')
            vs=$(awk -v a="$spf" -v b="$native" 'BEGIN { printf "%.2f", a / b }')
            echo "| $backend | \`$flags\` | $t | $base | $spf | $ratio | $native | $vs |"
        done
    done
done
echo
echo "| malloc path (default flags) | threads | spf | jemalloc | mimalloc | system |"
echo "|---|---|---|---|---|---|"
for t in $threads; do
    row="| copy + search | $t"
    for a in spf jemalloc mimalloc system; do
        out=$($bin -t "$t" -S "$secs" --mode spf --alloc "$a")
        row="$row | $(rate "SPF" <<<"$out")"
    done
    echo "$row |"
done
