#!/bin/sh
# Instructions per small alloc+free pair (callgrind), for spf, jemalloc and
# mimalloc: (instructions at 2 M pairs - at 1 M pairs) / 1 M. SIZE defaults
# to 16. valgrind cannot map spf's default reservation, hence SPF_RESERVE.
set -eu
size=${1:-16}
cargo build --release --example pair_count >/dev/null 2>&1
bin=target/release/examples/pair_count
count() {
    SPF_RESERVE=4g valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        "$bin" "$1" "$size" "$2" 2>&1 | sed -n 's/.*Collected : *\([0-9]*\).*/\1/p'
}
for a in spf jemalloc mimalloc; do
    one=$(count "$a" 1000000)
    two=$(count "$a" 2000000)
    echo "$a $size B: $(( (two - one) / 1000000 )) instructions per pair"
done
