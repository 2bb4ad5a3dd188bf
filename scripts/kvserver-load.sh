#!/usr/bin/env bash
# examples/kvserver under memaslap (libmemcached's load generator), on each
# allocator — SpfAlloc, SpfAlloc with SPF_COMMIT=touch (large blocks
# committed by the fault handler), jemalloc, the system allocator (glibc) —
# at 2, 8 and 32 concurrent connections, with values of 16 B to 512 KiB.
# Prints a markdown table: throughput, mean and p99 latency (memaslap's log2
# histogram, so the p99 is a power-of-two upper bound), get misses,
# evictions, the server's peak resident memory (VmHWM, read just before it
# is stopped) and, under SpfAlloc, its faults (speculative / classic).
#
# While each cell's load runs, the server's resident memory (VmRSS) is
# sampled every 100 ms into a CSV file with the header
# `allocator,connections,t_ms,rss_kib` (t_ms: since the load started).
#
# usage: scripts/kvserver-load.sh [-t SECONDS | -x OPS] [-m MiB] [-c "2 8 32"]
#                   [-a "spf spf-touch jemalloc system"] [--rss-csv PATH] [--no-build]
#   -t   seconds per cell (default 10)
#   -x   a fixed number of operations per cell instead (memaslap -x): the
#        same load for every allocator, whatever its speed
#   -m   the server's memory limit, MiB (default 256; memaslap's working
#        set is larger, so the server evicts and the allocator churns)
#   -c   connection counts
#   -a   allocators
#   --rss-csv    where the RSS samples go (default
#                $CARGO_TARGET_DIR/kvserver-rss.csv, i.e. target/)
#   --no-build   reuse the binaries of the last run
#
# Needs memaslap (Debian: apt-get install libmemcached-tools, which names
# it memcaslap). Binaries go to $CARGO_TARGET_DIR/kvserver-load (default
# target/), with each cell's memaslap output and server stats.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=10
mib=256
conns="2 8 32"
allocs="spf spf-touch jemalloc system"
build=1
ops=
csv=
while [ $# -gt 0 ]; do
    case "$1" in
        -t) secs=$2; shift 2 ;;
        -x) ops=$2; shift 2 ;;
        --rss-csv) csv=$2; shift 2 ;;
        -m) mib=$2; shift 2 ;;
        -c) conns=$2; shift 2 ;;
        -a) allocs=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
        *) echo "kvserver-load: unknown argument $1 (try -h)" >&2; exit 2 ;;
    esac
done

memaslap=$(command -v memaslap || command -v memcaslap || true)
if [ -z "$memaslap" ]; then
    echo "kvserver-load: memaslap not found (apt-get install libmemcached-tools)" >&2
    exit 1
fi

target=${CARGO_TARGET_DIR:-target}
out="$target/kvserver-load"
mkdir -p "$out/results"
csv=${csv:-$target/kvserver-rss.csv}
mkdir -p "$(dirname "$csv")"
echo "allocator,connections,t_ms,rss_kib" > "$csv"

# The binary an allocator runs: spf-touch is the spf binary with
# SPF_COMMIT=touch in its environment.
binary_of() {
    case "$1" in
        spf|spf-touch) echo spf ;;
        jemalloc|system) echo "$1" ;;
        *) echo "kvserver-load: unknown allocator $1" >&2; exit 2 ;;
    esac
}

if [ "$build" = 1 ]; then
    for b in $(for a in $allocs; do binary_of "$a"; done | sort -u); do
        features=()
        [ "$b" = spf ] || features=(--features "kvserver-$b")
        cargo build --release --example kvserver "${features[@]}" >&2
        cp "$target/release/examples/kvserver" "$out/kvserver-$b"
    done
fi

# Keys of 16-64 bytes; values from 16 B to 512 KiB, most of them small;
# 10 % sets, 90 % gets (memaslap's default mix).
cfg="$out/memaslap.cfg"
cat > "$cfg" <<'EOF'
key
16 64 1
value
16 1024 0.5
1025 16384 0.3
16385 131072 0.15
131073 524288 0.05
cmd
0 0.1
1 0.9
EOF

# Appends "allocator,connections,t_ms,rss_kib" lines for process $1 to
# $csv every 100 ms (on a fixed schedule from the start, so the sampling
# time does not drift) until the process is gone or this is killed.
sample_rss() {
    local pid=$1 a=$2 c=$3 t0 now next kib
    t0=$(date +%s%N)
    next=$t0
    while kib=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) && [ -n "$kib" ]; do
        now=$(date +%s%N)
        echo "$a,$c,$(( (now - t0) / 1000000 )),$kib" >> "$csv"
        next=$(( next + 100000000 ))
        now=$(date +%s%N)
        if (( next > now )); then
            sleep "$(printf '0.%09d' $(( next - now )))"
        fi
    done
}

sampler_pid=
stop_sampler() {
    if [ -n "$sampler_pid" ]; then
        kill "$sampler_pid" 2>/dev/null || true
        wait "$sampler_pid" 2>/dev/null || true
        sampler_pid=
    fi
}

server_pid=
stop_server() {
    stop_sampler
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}
trap stop_server EXIT

# One server's `stats`, over bash's /dev/tcp.
server_stats() {
    timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1; printf 'stats\r\nquit\r\n' >&3; cat <&3" |
        tr -d '\r'
}

# memaslap's output → "ops/s avg_us p99_us gets misses".
parse_memaslap() {
    awk '
        /^Total Statistics \(/ { blk = 1; next }
        blk && /Avg:/ { avg = $2 }
        blk && /Log2 Dist:/ { dist = 1; next }
        blk && dist && /^ *[0-9]+:/ {
            base = $1; sub(":", "", base)
            for (i = 2; i <= NF; i++) {
                e = base + i - 2; d[e] = $i; total += $i; if (e > maxe) maxe = e
            }
            next
        }
        blk && dist && /^[[:space:]]*$/ { blk = 0; dist = 0 }
        /^cmd_get:/ { gets = $2 }
        /^get_misses:/ { misses = $2 }
        /^Run time:/ { for (i = 1; i <= NF; i++) if ($i == "TPS:") tps = $(i + 1) }
        END {
            # Bucket e holds latencies in (2^(e-1), 2^e] microseconds.
            cum = 0; p99 = "?"
            for (e = 0; e <= maxe; e++) {
                cum += d[e]; if (total > 0 && cum >= 0.99 * total) { p99 = 2 ^ e; break }
            }
            printf "%s %s %s %s %s\n", tps, avg, p99, gets, misses
        }' "$1"
}

cpus=$(nproc)
if [ -n "$ops" ]; then
    load=(-x "$ops" -S 1s)
    per_cell="$ops operations"
else
    load=(-t "${secs}s" -S "${secs}s")
    per_cell="${secs} s"
fi
echo "kvserver-load: $(nproc) CPUs, kernel $(uname -r), $per_cell per cell, -m ${mib} MiB, $memaslap; RSS samples in $csv" >&2
echo
echo "| allocator | connections | ops/s | mean µs | p99 µs (≤) | get misses | evictions | peak RSS MiB | spf faults (spec./classic) |"
echo "|---|---|---|---|---|---|---|---|---|"
for c in $conns; do
    for a in $allocs; do
        log="$out/results/$a-c$c"
        commit=eager
        [ "$a" = spf-touch ] && commit=touch
        # The last run's log goes first: the server below truncates it only
        # once its job starts, and the port would be read from the old one.
        rm -f "$log.server"
        SPF_COMMIT=$commit "$out/kvserver-$(binary_of "$a")" -p 0 -m "$mib" > "$log.server" 2>&1 &
        server_pid=$!
        port=
        for _ in $(seq 100); do
            port=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$log.server" 2>/dev/null | cut -d: -f2 || true)
            [ -n "$port" ] && break
            sleep 0.1
        done
        if [ -z "$port" ]; then
            echo "kvserver-load: kvserver-$a did not start:" >&2
            cat "$log.server" >&2
            exit 1
        fi
        # memaslap wants no more threads than connections.
        threads=$(( c < cpus ? c : cpus ))
        sample_rss "$server_pid" "$a" "$c" &
        sampler_pid=$!
        if ! "$memaslap" -s "127.0.0.1:$port" -F "$cfg" "${load[@]}" \
                -T "$threads" -c "$c" > "$log.memaslap" 2>&1; then
            echo "kvserver-load: memaslap failed against kvserver-$a, -c $c:" >&2
            tail -20 "$log.memaslap" >&2
            exit 1
        fi
        stop_sampler
        server_stats "$port" > "$log.stats"
        hwm_kib=$(awk '/^VmHWM:/ { print $2 }' "/proc/$server_pid/status")
        stop_server
        read -r tps avg p99 gets misses < <(parse_memaslap "$log.memaslap")
        stat() { awk -v k="$1" '$1 == "STAT" && $2 == k { print $3 }' "$log.stats"; }
        evictions=$(stat evictions)
        faults="–"
        [ -n "$(stat spf_faults)" ] && faults="$(stat spf_faults_speculative) / $(stat spf_faults_classic)"
        miss_pct=$(awk -v g="$gets" -v m="$misses" 'BEGIN { printf "%.1f %%", (g > 0 ? 100 * m / g : 0) }')
        printf "| %s | %s | %s | %s | %s | %s | %s | %d | %s |\n" \
            "$a" "$c" "$tps" "$avg" "$p99" "$miss_pct" "${evictions:-?}" "$(( hwm_kib / 1024 ))" "$faults"
    done
done
