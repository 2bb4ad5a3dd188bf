#!/usr/bin/env bash
# Measures everything docs/BENCHMARKS.md draws, on this machine, and redraws
# the pictures in docs/img/ (SVG). One command, run on a quiet machine:
#
#   scripts/figures.sh [-r RUNS] [-s SECONDS] [-t "1 2 4 8"] [--only PART] [--draw-only]
#     -r   repeated runs of every measurement (default 5); the pictures
#          show the median and the min–max across them
#     -s   seconds per ebizzy phase (default 2)
#     -t   ebizzy thread counts (default "1 2 4 8")
#     --only ebizzy|firsttouch|alloc|kvserver   measure one part, keep the rest
#     --draw-only   redraw from the last raw output, measure nothing
#
# Raw output goes to $CARGO_TARGET_DIR/figures/raw (default target/), one
# file per run; spf-figures (tools/figures) reads it, writes the SVGs and
# prints the tables that docs/BENCHMARKS.md quotes. A commit backend the
# machine refuses is left out of the pictures and named on stderr.
# The kvserver part needs memaslap (apt-get install libmemcached-tools) and
# runs scripts/kvserver-load.sh --rss-csv (spf, jemalloc and glibc at 8 and
# 32 connections, the same 500,000 operations each); without memaslap that
# picture keeps its data.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=5
secs=2
threads="1 2 4 8"
only=""
measure=1
while [ $# -gt 0 ]; do
    case "$1" in
        -r) runs=$2; shift 2 ;;
        -s) secs=$2; shift 2 ;;
        -t) threads=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        --draw-only) measure=0; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "figures: unknown argument $1 (try -h)" >&2; exit 2 ;;
    esac
done

target=${CARGO_TARGET_DIR:-target}
raw="$target/figures/raw"
bin="$target/release/examples"
part() { [ -z "$only" ] || [ "$only" = "$1" ]; }

if [ "$measure" = 1 ]; then
    mkdir -p "$raw"
    cargo build --release --examples
    # One short line for the pictures' titles; the CPU model goes to stderr.
    echo "$(nproc) CPUs, Linux $(uname -r | cut -d. -f1-2), $(date -u +%Y-%m-%d)" >"$raw/machine.txt"
    model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    echo "figures: $(cat "$raw/machine.txt"), ${model:-CPU unknown}; load $(cut -d' ' -f1-3 /proc/loadavg)" >&2

    if part ebizzy; then
        rm -f "$raw"/ebizzy-*.txt
        for r in $(seq 1 "$runs"); do
            for backend in uffd guard mprotect; do
                for t in $threads; do
                    echo "figures: ebizzy run $r/$runs, $backend, $t threads" >&2
                    SPF_BACKEND=$backend "$bin/ebizzy" -mTR -t "$t" -S "$secs" --mode both \
                        --native >"$raw/ebizzy-$backend-t$t-r$r.txt" 2>&1 || true
                done
            done
        done
    fi
    if part firsttouch; then
        echo "figures: firsttouch, $runs runs per subject" >&2
        "$bin/firsttouch" --backends uffd,guard,mprotect --runs "$runs" --threads 1,2 \
            >"$raw/firsttouch.txt"
    fi
    if part alloc; then
        rm -f "$raw"/alloc_bench-*.txt
        for r in $(seq 1 "$runs"); do
            echo "figures: alloc_bench run $r/$runs" >&2
            "$bin/alloc_bench" --runs 1 >"$raw/alloc_bench-r$r.txt"
        done
    fi
    if part kvserver; then
        if command -v memaslap >/dev/null || command -v memcaslap >/dev/null; then
            echo "figures: kvserver RSS over time" >&2
            scripts/kvserver-load.sh -x 500000 -c "8 32" -a "spf jemalloc system" \
                --rss-csv "$raw/kvserver-rss.csv" >"$raw/kvserver-load.txt"
        else
            echo "figures: memaslap not found: kvserver-rss.svg keeps its last data" >&2
        fi
    fi
fi

cargo run --release -q -p spf-figures -- "$raw" docs/img | tee "$target/figures/tables.md"
echo "figures: tables in $target/figures/tables.md" >&2
