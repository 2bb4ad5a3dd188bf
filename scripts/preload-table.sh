#!/usr/bin/env bash
# Real programs on four allocators, side by side in one run: glibc's malloc
# (no preload), jemalloc and mimalloc (Debian's libjemalloc.so.2 and
# libmimalloc.so.2) and spf (target/release/libspf.so), each loaded with
# LD_PRELOAD. Rounds interleave the allocators (the order rotates), and the
# tables give medians over the rounds.
#
# - memcached (-t 2, -m 256, loopback) under memaslap: ops/s, mean and p99
#   latency (memaslap's log2 histogram: the p99 is a power-of-two upper
#   bound), the server's peak RSS (VmHWM);
# - sort --parallel=2, xz -T2 -3, python3 (four allocating threads),
#   git (commit + repack with two threads): wall time, CPU time (user +
#   system) and peak RSS from /usr/bin/time.
#
# usage: scripts/preload-table.sh [-r ROUNDS] [-t SECONDS] [-c CONNS] [--no-build]
#   -r   rounds (default 3)       -t   memaslap seconds per run (default 5)
#   -c   memaslap connections (default 16)
# Needs memcached, libmemcached-tools (memcaslap), libjemalloc2,
# libmimalloc2.0, xz-utils, git, python3, /usr/bin/time (package time).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3
secs=5
conns=16
build=1
while [ $# -gt 0 ]; do
    case "$1" in
        -r) rounds=$2; shift 2 ;;
        -t) secs=$2; shift 2 ;;
        -c) conns=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "preload-table: unknown argument $1 (try -h)" >&2; exit 2 ;;
    esac
done

target=${CARGO_TARGET_DIR:-target}
[ "$build" = 1 ] && cargo build --release -p spf-preload >&2
libdir=/usr/lib/x86_64-linux-gnu
declare -A lib=(
    [glibc]=""
    [jemalloc]="$libdir/libjemalloc.so.2"
    [mimalloc]="$libdir/libmimalloc.so.2"
    [spf]="$PWD/$target/release/libspf.so"
)
allocs=(glibc jemalloc mimalloc spf)
for a in "${allocs[@]}"; do
    if [ -n "${lib[$a]}" ] && [ ! -f "${lib[$a]}" ]; then
        echo "preload-table: ${lib[$a]} is missing" >&2
        exit 1
    fi
done
memaslap=$(command -v memaslap || command -v memcaslap || true)
for t in memcached "$memaslap" xz git python3 /usr/bin/time; do
    if [ -z "$t" ] || ! command -v "$t" >/dev/null; then
        echo "preload-table: ${t:-memaslap} not found (see -h)" >&2
        exit 1
    fi
done

out="$target/preload-table"
rm -rf "$out"
mkdir -p "$out/results"
out=$(realpath "$out")

# Inputs: 1.6 M generated lines (about 64 MiB) for sort, 8 MiB of them for xz.
python3 - "$out/lines.txt" <<'EOF'
import random, sys
r = random.Random(7)
with open(sys.argv[1], "w") as f:
    for _ in range(1_600_000):
        word = "".join(r.choice("abcdefghij") for _ in range(r.randint(1, 30)))
        f.write("%08x %s %d\n" % (r.getrandbits(32), word, r.randint(0, 999_999)))
EOF
head -c 8000000 "$out/lines.txt" > "$out/lines8.txt"

cat > "$out/memaslap.cfg" <<'EOF'
key
16 64 1
value
16 1024 0.6
1025 16384 0.3
16385 131072 0.1
cmd
0 0.1
1 0.9
EOF

run_with() { # allocator, command...
    local a=$1
    shift
    if [ -n "${lib[$a]}" ]; then
        LD_PRELOAD="${lib[$a]}" "$@"
    else
        env -u LD_PRELOAD "$@"
    fi
}

git_job() { # folder, input: four commits of 200 generated files, a threaded repack
    local dir=$1 input=$2
    rm -rf "$dir"
    mkdir -p "$dir"
    cd "$dir"
    export GIT_AUTHOR_DATE=2026-01-01T00:00:00Z GIT_COMMITTER_DATE=2026-01-01T00:00:00Z
    git -c init.defaultBranch=main init -q
    for round in 0 1 2 3; do
        tail -c +$((round * 4099 + 1)) "$input" | split -b 40000 -d -a 3 - f
        git add -A
        git -c user.name=spf -c user.email=spf@example.invalid commit -q -m "round $round"
    done
    git -c pack.threads=2 repack -a -d -f -q
    git fsck --full --no-progress
}
export -f git_job

# One timed program: prints "wall_s peak_kib cpu_s" (CPU = user + system,
# less sensitive than wall time to other load on the machine).
timed() { # allocator, name, command...
    local a=$1 name=$2
    shift 2
    local log="$out/results/$name-$a-$round"
    run_with "$a" /usr/bin/time -f "%e %M %U %S" -o "$log.time" "$@" > "$log.out" 2> "$log.err"
    awk '{ printf "%s %s %.2f\n", $1, $2, $3 + $4 }' "$log.time"
}

parse_memaslap() { # file → "ops/s avg_us p99_us"
    awk '
        /^Total Statistics \(/ { blk = 1; next }
        blk && /Avg:/ { avg = $2 }
        blk && /Log2 Dist:/ { dist = 1; next }
        blk && dist && /^ *[0-9]+:/ {
            base = $1; sub(":", "", base)
            for (i = 2; i <= NF; i++) { e = base + i - 2; d[e] = $i; total += $i; if (e > maxe) maxe = e }
            next
        }
        blk && dist && /^[[:space:]]*$/ { blk = 0; dist = 0 }
        /^Run time:/ { for (i = 1; i <= NF; i++) if ($i == "TPS:") tps = $(i + 1) }
        END {
            cum = 0; p99 = "?"
            for (e = 0; e <= maxe; e++) { cum += d[e]; if (total > 0 && cum >= 0.99 * total) { p99 = 2 ^ e; break } }
            printf "%s %s %s\n", tps, avg, p99
        }' "$1"
}

server=
stop_server() {
    if [ -n "$server" ]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
        server=
    fi
}
trap stop_server EXIT

memcached_run() { # allocator → "ops/s avg_us p99_us peak_kib"
    local a=$1 port log="$out/results/memcached-$1-$round"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    local user=()
    [ "$(id -u)" = 0 ] && user=(-u root)
    # Through env, which execs: $! is memcached's own PID (for VmHWM).
    local pre=(env -u LD_PRELOAD)
    [ -n "${lib[$a]}" ] && pre=(env "LD_PRELOAD=${lib[$a]}")
    "${pre[@]}" memcached -l 127.0.0.1 -p "$port" -U 0 -t 2 -m 256 -c 1024 "${user[@]}" \
        > "$log.server" 2>&1 &
    server=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    "$memaslap" -s "127.0.0.1:$port" -F "$out/memaslap.cfg" -t "${secs}s" -S "${secs}s" \
        -T 2 -c "$conns" > "$log.memaslap" 2>&1
    local hwm
    hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$server/status")
    stop_server
    echo "$(parse_memaslap "$log.memaslap") $hwm"
}

echo "preload-table: $(nproc) CPUs, kernel $(uname -r), $rounds rounds, memaslap ${secs}s at $conns connections" >&2
echo "preload-table: load at start: $(uptime)" >&2
for ((round = 0; round < rounds; round++)); do
    # Rotate the order each round, so no allocator always runs first.
    order=("${allocs[@]:round % 4}" "${allocs[@]:0:round % 4}")
    for a in "${order[@]}"; do
        echo "round $round: $a" >&2
        echo "$a memcached $(memcached_run "$a")" >> "$out/samples"
        echo "$a sort $(timed "$a" sort env LC_ALL=C sort --parallel=2 -S 256M -k2,2 -k3,3n -k1,1 \
            -o /dev/null "$out/lines.txt")" >> "$out/samples"
        echo "$a xz $(timed "$a" xz xz -T2 -3 --block-size=1MiB -c "$out/lines8.txt")" >> "$out/samples"
        echo "$a python3 $(timed "$a" python3 python3 spf-preload/tests/programs/alloc_heavy.py)" \
            >> "$out/samples"
        echo "$a git $(timed "$a" git bash -c "git_job $out/git-$a $out/lines8.txt")" \
            >> "$out/samples"
    done
done
echo "preload-table: load at end: $(uptime)" >&2

# Medians per allocator and program; ratios against glibc.
python3 - "$out/samples" "${allocs[@]}" <<'EOF'
import statistics, sys
from collections import defaultdict
samples = defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    samples[(f[0], f[1])].append([float(x) if x != "?" else float("nan") for x in f[2:]])
allocs = sys.argv[2:]
med = lambda k, i: statistics.median(s[i] for s in samples[k])
print("memcached (-t 2), memaslap: medians")
print()
print("| allocator | ops/s | × glibc | mean µs | p99 µs (≤) | peak RSS MiB | × glibc |")
print("|---|---|---|---|---|---|---|")
g = ("glibc", "memcached")
for a in allocs:
    k = (a, "memcached")
    print("| %s | %.0f | %.2f | %.0f | %.0f | %.1f | %.2f |" % (
        a, med(k, 0), med(k, 0) / med(g, 0), med(k, 1), med(k, 2),
        med(k, 3) / 1024, med(k, 3) / med(g, 3)))
print()
print("Real programs: median wall time, CPU time (user + system) and peak RSS")
print()
print("| program | allocator | wall s | × glibc | CPU s | × glibc | peak RSS MiB | × glibc |")
print("|---|---|---|---|---|---|---|---|")
for prog in ["sort", "xz", "python3", "git"]:
    g = ("glibc", prog)
    for a in allocs:
        k = (a, prog)
        print("| %s | %s | %.2f | %.2f | %.2f | %.2f | %.1f | %.2f |" % (
            prog, a, med(k, 0), med(k, 0) / med(g, 0), med(k, 2), med(k, 2) / med(g, 2),
            med(k, 1) / 1024, med(k, 1) / med(g, 1)))
EOF
