//! What first touch costs: spf's fault path (speculative and classic, at
//! several granules, with and without commit-ahead and populate) beside the
//! kernel's own demand paging of a plain anonymous mapping, in one run; the
//! effect of the per-CPU cap; and the cost of a region-map lookup as the
//! number of regions grows.
//!
//! ```text
//! cargo run --release --example firsttouch -- [--runs 7] [--mib 256] [--threads 1,2]
//! cargo run --release --example firsttouch -- --backends uffd,guard,mprotect --threads 1,2,4
//! ```
//!
//! `--backends` compares commit backends: the commit backend is chosen once
//! per process, so the example runs itself once per backend (with
//! `SPF_BACKEND` set) and each child prints the 4 KiB / 64 KiB / 2 MiB rows
//! beside native demand paging measured in that same child.
//!
//! Prints markdown tables of medians. Timings are wall-clock on whatever
//! machine runs it: compare rows of one run, not runs of different machines.

#[path = "../benches/workloads/mod.rs"]
mod workloads;

use spf::{CapPolicy, Mode, Region, RegionOptions};
use std::time::Instant;
use workloads::{first_touch, Touched, PAGE};

struct Args {
    runs: usize,
    mib: usize,
    threads: Vec<usize>,
    backends: Vec<String>,
    compact: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        runs: 7,
        mib: 256,
        threads: vec![1, 2],
        backends: Vec::new(),
        compact: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--compact" {
            a.compact = true;
            continue;
        }
        let value = it
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let num = |v: &str| {
            v.parse::<usize>()
                .unwrap_or_else(|_| usage(&format!("bad number {v}")))
        };
        match flag.as_str() {
            "--runs" => a.runs = num(&value).max(1),
            "--mib" => a.mib = num(&value).max(2),
            "--threads" => a.threads = value.split(',').map(num).collect(),
            "--backends" => a.backends = value.split(',').map(str::to_owned).collect(),
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    a
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "firsttouch: {msg}\nusage: firsttouch [--runs N] [--mib MIB] [--threads 1,2,...] \
         [--backends uffd,guard,mprotect]"
    );
    std::process::exit(2)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// ns per 4 KiB page for one fresh mapping or region, and faults taken.
fn measure(what: Touched, len: usize, threads: usize) -> (f64, u64) {
    let (elapsed, faults) = first_touch(what, len, threads);
    (elapsed.as_nanos() as f64 / (len / PAGE) as f64, faults)
}

fn row(name: &str, subject: Touched, args: &Args, threads: usize, native: Option<f64>) -> f64 {
    let len = args.mib << 20;
    let mut ns = Vec::new();
    let mut faults = 0;
    for _ in 0..args.runs {
        let (n, f) = measure(subject, len, threads);
        ns.push(n);
        faults = f;
    }
    let m = median(ns);
    let vs = native.map_or("1.00×".to_owned(), |n| format!("{:.2}×", m / n));
    let per_fault = if faults > 0 {
        format!("{:.0}", m * (len / PAGE) as f64 / faults as f64)
    } else {
        "—".to_owned()
    };
    println!("| {name} | {threads} | {m:.0} | {per_fault} | {faults} | {vs} |");
    m
}

/// One backend's rows (this process runs it): native, then bare granules
/// of 4 KiB, 64 KiB and 2 MiB, speculative. The subjects are measured
/// interleaved — one run of each per round — so that a slow spell of the
/// machine hits all of them alike, after touching and dropping 320 MiB
/// once (a VM hands free memory back to its host; the first touch of such
/// memory also pays the host's fault).
fn compact_rows(args: &Args) {
    let backend = spf::backend().map_or("none", |b| b.name());
    let len = args.mib << 20;
    first_touch(Touched::Native { huge: false }, 320 << 20, 1);
    let spf_at = |kib: usize| Touched::Spf {
        mode: Mode::Speculative,
        opts: RegionOptions::default().granule(kib << 10),
    };
    let subjects = [
        ("native", Touched::Native { huge: false }),
        ("spf 4 KiB", spf_at(4)),
        ("spf 64 KiB", spf_at(64)),
        ("spf 2 MiB", spf_at(2048)),
    ];
    for &t in &args.threads {
        let mut ns = vec![Vec::new(); subjects.len()];
        let mut faults = vec![0; subjects.len()];
        for _ in 0..args.runs {
            for (i, &(_, subject)) in subjects.iter().enumerate() {
                let (n, f) = measure(subject, len, t);
                ns[i].push(n);
                faults[i] = f;
            }
        }
        let spread = |v: &[f64]| {
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = v.iter().copied().fold(0.0, f64::max);
            format!("{min:.0}–{max:.0}")
        };
        let native = median(ns[0].clone());
        for (i, &(name, _)) in subjects.iter().enumerate() {
            let m = median(ns[i].clone());
            println!(
                "| {backend} | {name} | {t} | {m:.0} | {} | {} | {:.2}× |",
                spread(&ns[i]),
                faults[i],
                m / native
            );
        }
    }
}

/// Runs this example once per backend (`SPF_BACKEND`), `--compact`.
fn backends_table(args: &Args) {
    println!(
        "\n### First touch of a fresh {} MiB mapping per commit backend (median of {} runs)\n",
        args.mib, args.runs
    );
    println!(
        "spf firsttouch: {} CPUs, kernel {}; each backend in a child process, subjects \
         interleaved\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "| backend | subject | threads | ns per 4 KiB page (median) | min–max | faults | vs native |"
    );
    println!("|---|---|---|---|---|---|---|");
    let threads: Vec<String> = args.threads.iter().map(usize::to_string).collect();
    for backend in &args.backends {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--compact", "--runs", &args.runs.to_string()])
            .args([
                "--mib",
                &args.mib.to_string(),
                "--threads",
                &threads.join(","),
            ])
            .env("SPF_BACKEND", backend)
            .output()
            .expect("run firsttouch");
        if out.status.success() {
            print!("{}", String::from_utf8_lossy(&out.stdout));
        } else {
            let why = String::from_utf8_lossy(&out.stderr);
            println!("| {backend} | refused here: {} | | | | | |", why.trim());
        }
    }
}

fn first_touch_table(args: &Args) {
    let kib = |k: usize| RegionOptions::default().granule(k << 10);
    println!(
        "\n### First touch of a fresh {} MiB mapping (median of {} runs)\n",
        args.mib, args.runs
    );
    println!("| subject | threads | ns per 4 KiB page | ns per fault | faults | vs native |");
    println!("|---|---|---|---|---|---|");
    for &t in &args.threads {
        let native = row(
            "native anonymous mmap",
            Touched::Native { huge: false },
            args,
            t,
            None,
        );
        row(
            "native mmap + MADV_HUGEPAGE",
            Touched::Native { huge: true },
            args,
            t,
            Some(native),
        );
        let spf_rows: [(&str, Mode, RegionOptions); 12] = [
            ("spf 4 KiB speculative", Mode::Speculative, kib(4)),
            ("spf 4 KiB classic", Mode::Classic, kib(4)),
            ("spf 64 KiB speculative", Mode::Speculative, kib(64)),
            ("spf 64 KiB classic", Mode::Classic, kib(64)),
            (
                "spf 64 KiB + populate",
                Mode::Speculative,
                kib(64).populate(true),
            ),
            (
                "spf 64 KiB + ahead 1 MiB",
                Mode::Speculative,
                kib(64).commit_ahead(1 << 20),
            ),
            (
                "spf 64 KiB + ahead 1 MiB + populate",
                Mode::Speculative,
                kib(64).commit_ahead(1 << 20).populate(true),
            ),
            (
                "spf 64 KiB + ahead 1 MiB + populate, classic",
                Mode::Classic,
                kib(64).commit_ahead(1 << 20).populate(true),
            ),
            ("spf 2 MiB (huge) speculative", Mode::Speculative, kib(2048)),
            ("spf 2 MiB (huge) classic", Mode::Classic, kib(2048)),
            (
                "spf 2 MiB (huge) + populate",
                Mode::Speculative,
                kib(2048).populate(true),
            ),
            (
                "spf 2 MiB (huge) + ahead 8 MiB + populate",
                Mode::Speculative,
                kib(2048).commit_ahead(8 << 20).populate(true),
            ),
        ];
        for (name, mode, opts) in spf_rows {
            row(name, Touched::Spf { mode, opts }, args, t, Some(native));
        }
    }
}

/// The per-CPU cap against speed, with threads outnumbering CPUs.
fn cap_table(args: &Args) {
    let threads = 2 * std::thread::available_parallelism().map_or(2, |n| n.get());
    let opts = RegionOptions::default()
        .granule(64 << 10)
        .commit_ahead(1 << 20)
        .populate(true);
    println!(
        "\n### The per-CPU cap: 64 KiB granules, ahead 1 MiB, populate, {threads} threads (median of {} runs)\n",
        args.runs
    );
    println!("| cap per CPU | policy | ns per 4 KiB page | spf_cap | classic | most bytes in flight on one CPU |");
    println!("|---|---|---|---|---|---|");
    for (cap, policy) in [
        (0, CapPolicy::Shrink),
        (256 << 10, CapPolicy::Shrink),
        (1 << 20, CapPolicy::Shrink),
        (1 << 20, CapPolicy::Classic),
        (8 << 20, CapPolicy::Shrink),
        (usize::MAX, CapPolicy::Shrink),
    ] {
        spf::set_cap(cap);
        spf::set_cap_policy(policy);
        let mut ns = Vec::new();
        let before = spf::stats();
        spf::reset_peaks();
        for _ in 0..args.runs {
            ns.push(
                measure(
                    Touched::Spf {
                        mode: Mode::Speculative,
                        opts,
                    },
                    args.mib << 20,
                    threads,
                )
                .0,
            );
        }
        let st = spf::stats().since(&before);
        let cap_text = if cap == usize::MAX {
            "unlimited".to_owned()
        } else {
            format!("{} KiB", cap >> 10)
        };
        println!(
            "| {cap_text} | {policy:?} | {:.0} | {} | {} | {} KiB |",
            median(ns),
            st.spf_cap,
            st.classic,
            st.max_inflight_bytes >> 10
        );
    }
    spf::set_cap(spf::cap_default());
    spf::set_cap_policy(CapPolicy::Shrink);
}

/// Steps 2–3 of the fault path at 1, 1,000 and 100,000 live regions.
fn lookup_table() {
    println!("\n### Region-map lookup (map + descriptor snapshot), random addresses\n");
    println!("| live regions | ns per lookup (fault path) | ns per `region_at` (pinned) |");
    println!("|---|---|---|");
    let mut regions: Vec<Region> = Vec::new();
    for target in [1usize, 1_000, 100_000] {
        while regions.len() < target {
            let len = PAGE << (regions.len() % 4);
            regions.push(Region::reserve(len, RegionOptions::default().granule(PAGE)).unwrap());
        }
        let addrs: Vec<usize> = (0..4096)
            .map(|i| {
                let r = &regions[(i * 7919) % regions.len()];
                r.as_ptr() as usize + (i * 131) % r.len()
            })
            .collect();
        let rounds = 2_000_000 / addrs.len();
        let t = Instant::now();
        let mut found = 0usize;
        for _ in 0..rounds {
            for &a in &addrs {
                found += spf::testing::lookup(std::hint::black_box(a as *const u8)) as usize;
            }
        }
        let fast = t.elapsed().as_nanos() as f64 / (rounds * addrs.len()) as f64;
        assert_eq!(
            found,
            rounds * addrs.len(),
            "every address is in a live region"
        );
        let t = Instant::now();
        found = 0;
        for _ in 0..rounds / 8 {
            for &a in &addrs {
                found += spf::region_at(std::hint::black_box(a as *const u8)).is_some() as usize;
            }
        }
        let pinned = t.elapsed().as_nanos() as f64 / (rounds / 8 * addrs.len()) as f64;
        assert_eq!(found, rounds / 8 * addrs.len());
        println!("| {target} | {fast:.1} | {pinned:.1} |");
    }
}

fn main() {
    let args = parse_args();
    if let Err(e) = spf::init() {
        eprintln!("{e}");
        std::process::exit(1);
    }
    if args.compact {
        compact_rows(&args);
        return;
    }
    if !args.backends.is_empty() {
        backends_table(&args);
        return;
    }
    println!(
        "spf firsttouch: {} CPUs, kernel {}, commit backend {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        spf::backend().map_or("none", |b| b.name())
    );
    first_touch_table(&args);
    cap_table(&args);
    lookup_table();
}
