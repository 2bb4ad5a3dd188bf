//! The quick benchmark table: a subset of the criterion suite
//! (`benches/alloc.rs`, on the same workloads) that runs in a few minutes on
//! two cores and prints markdown tables of medians, with ratios against
//! jemalloc, the peak resident memory of each allocator on the larson-like
//! and large workloads, and first-touch throughput of spf's fault path
//! against the kernel's demand paging.
//!
//! ```text
//! cargo run --release --example alloc_bench -- [--runs 5] [--mib 256] [--threads 1,2,4] [--threshold] [--only TEXT] [--alone ALLOCATOR]
//! ```
//!
//! Times are medians of `--runs` runs, the allocators interleaved run by run
//! so that drift in the machine's speed spreads over all of them. Peak
//! resident memory comes from `VmHWM` in a child process per allocator
//! and workload (this binary run again with `--child`), so one allocator's
//! pages never count against another. `--threshold` adds where spf's
//! large-block threshold sits (medium pages against regions of their own).
//! `--only TEXT` runs just the allocator rows whose name contains `TEXT`
//! (their time and peak RSS), without the first-touch table. `--alone
//! ALLOCATOR` runs the rows for that allocator only, `--runs` repetitions
//! in this one process, and prints each repetition's time and page faults
//! and the median of all but the first (cold) one: how the allocator does
//! warm, with no other allocator's memory use in between.

#[path = "../benches/workloads/mod.rs"]
mod workloads;

use spf::Mode;
use std::alloc::Layout;
use std::process::Command;
use std::time::Duration;
use workloads::*;

struct Args {
    runs: usize,
    mib: usize,
    threads: Vec<usize>,
    threshold: bool,
    only: Option<String>,
    child: Option<(String, String)>,
    alone: Option<String>,
}

fn parse_args() -> Args {
    let mut a = Args {
        runs: 5,
        mib: 256,
        threads: vec![1, 2, 4],
        threshold: false,
        only: None,
        child: None,
        alone: None,
    };
    let mut it = std::env::args().skip(1);
    let number = |it: &mut dyn Iterator<Item = String>, flag: &str| -> usize {
        it.next()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| usage(&format!("{flag} needs a positive number")))
    };
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--runs" => a.runs = number(&mut it, "--runs"),
            "--mib" => a.mib = number(&mut it, "--mib").max(4),
            "--threads" => {
                a.threads = it
                    .next()
                    .map(|v| {
                        v.split(',')
                            .filter_map(|t| t.parse().ok())
                            .filter(|&t| t > 0)
                            .collect()
                    })
                    .filter(|t: &Vec<usize>| !t.is_empty())
                    .unwrap_or_else(|| usage("--threads needs a list such as 1,2,4"))
            }
            "--threshold" => a.threshold = true,
            "--only" => {
                a.only = Some(
                    it.next()
                        .unwrap_or_else(|| usage("--only needs a row name")),
                )
            }
            "--alone" => {
                a.alone = Some(
                    it.next()
                        .unwrap_or_else(|| usage("--alone needs an allocator")),
                )
            }
            "--child" => match (it.next(), it.next()) {
                (Some(row), Some(subject)) => a.child = Some((row, subject)),
                _ => usage("--child needs a workload and an allocator"),
            },
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    a
}

fn usage(msg: &str) -> ! {
    eprintln!("alloc_bench: {msg}\nusage: alloc_bench [--runs N] [--mib MIB] [--threads 1,2,4] [--threshold] [--only TEXT] [--alone ALLOCATOR]");
    std::process::exit(2)
}

/// One row of the allocator table: a workload run `n` times, each
/// repetition reported in `unit`s (per item where `per_item` says).
struct Row {
    key: &'static str,
    unit: &'static str,
    /// Large-block workloads are measured for the touch subjects too.
    large: bool,
    /// Peak resident memory is measured for this row.
    rss: bool,
    n: u64,
    /// Nanoseconds in one reported unit, times items per repetition.
    per: f64,
    work: fn(Alloc, u64) -> Duration,
}

impl Row {
    /// A row timed in `unit` per repetition, measured for the subjects
    /// whose code differs, without peak RSS.
    fn new(key: &'static str, unit: &'static str, n: u64, work: fn(Alloc, u64) -> Duration) -> Row {
        let per = match unit {
            "µs" => 1e3,
            "ms" => 1e6,
            _ => 1.0,
        };
        Row {
            key,
            unit,
            large: false,
            rss: false,
            n,
            per,
            work,
        }
    }

    /// Reported per `items` items of each repetition (blocks, operations).
    fn per_item(mut self, items: usize) -> Row {
        self.per *= items as f64;
        self
    }

    /// A large-block workload: the touch subjects run it too.
    fn large(mut self) -> Row {
        self.large = true;
        self
    }

    /// Peak resident memory is measured for it.
    fn rss(mut self) -> Row {
        self.rss = true;
        self
    }
}

fn rows() -> Vec<Row> {
    let ops = LARSON_OPS;
    vec![
        Row::new("16 B pair", "ns", 2_000_000, |a, n| pairs(a, 16, n)),
        Row::new("64 B pair", "ns", 2_000_000, |a, n| pairs(a, 64, n)),
        Row::new("256 B pair", "ns", 2_000_000, |a, n| pairs(a, 256, n)),
        Row::new("1 KiB pair", "ns", 1_000_000, |a, n| pairs(a, 1024, n)),
        Row::new("4 KiB pair", "ns", 1_000_000, |a, n| pairs(a, 4096, n)),
        Row::new("batch 10k mixed, per block", "ns", 20, batch).per_item(BATCH),
        Row::new("cross-thread, per block", "ns", 8, exchange).per_item(EXCHANGE),
        Row::new("larson-like T=1, per op", "ns", 12, |a, n| larson(a, 1, n))
            .per_item(ops)
            .rss(),
        Row::new("larson-like T=2, per op", "ns", 6, |a, n| larson(a, 2, n))
            .per_item(2 * ops)
            .rss(),
        Row::new("larson-like T=4, per op", "ns", 4, |a, n| larson(a, 4, n))
            .per_item(4 * ops)
            .rss(),
        Row::new("larson-like T=8, per op", "ns", 3, |a, n| larson(a, 8, n))
            .per_item(8 * ops)
            .rss(),
        Row::new("hand-off 10k Strings, per block", "ns", 30, handoff).per_item(HANDOFF),
        Row::new("larson lock-free T=2, per op", "ns", 40, |a, n| {
            larson_free(a, 2, n)
        })
        .per_item(2 * LARSON_FREE_OPS)
        .rss(),
        Row::new("larson lock-free T=8, per op", "ns", 16, |a, n| {
            larson_free(a, 8, n)
        })
        .per_item(8 * LARSON_FREE_OPS)
        .rss(),
        Row::new("256 KiB alloc+touch+free", "µs", 2_000, |a, n| {
            large(a, 256 << 10, n)
        })
        .large()
        .rss(),
        Row::new("1 MiB alloc+touch+free", "µs", 1_000, |a, n| {
            large(a, 1 << 20, n)
        })
        .large()
        .rss(),
        Row::new("8 MiB alloc+touch+free", "µs", 100, |a, n| {
            large(a, 8 << 20, n)
        })
        .large()
        .rss(),
        Row::new("64 MiB alloc+touch+free", "µs", 10, |a, n| {
            large(a, 64 << 20, n)
        })
        .large()
        .rss(),
        Row::new("realloc growth to 64 MiB", "ms", 5, realloc_growth).large(),
        Row::new(
            "mixed torture (8 thr × 4 waves, 1 B–32 MiB, realloc, cross-thread, fork), per rep",
            "ms",
            1,
            torture,
        )
        .rss(),
    ]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn measured(row: &Row, s: Subject) -> bool {
    row.large || !s.large_only
}

/// The rows `--only` selects (all without it).
fn selected(only: Option<&str>) -> Vec<Row> {
    rows()
        .into_iter()
        .filter(|r| only.is_none_or(|o| r.key.contains(o)))
        .collect()
}

fn allocator_table(runs: usize, only: Option<&str>) {
    println!("\n### Allocator workloads (median of {runs} runs; lower is better)\n");
    let names: Vec<&str> = SUBJECTS.iter().map(|s| s.name).collect();
    println!(
        "| workload | unit | {} | spf / jemalloc |",
        names.join(" | ")
    );
    println!("|---|---|{}---|", "---|".repeat(SUBJECTS.len()));
    for row in selected(only) {
        let one =
            |s: Subject| s.run(|a| (row.work)(a, row.n)).as_nanos() as f64 / row.n as f64 / row.per;
        let mut times = vec![Vec::new(); SUBJECTS.len()];
        for s in SUBJECTS.into_iter().filter(|&s| measured(&row, s)) {
            one(s); // warm-up
        }
        for _ in 0..runs {
            for (i, s) in SUBJECTS.into_iter().enumerate() {
                if measured(&row, s) {
                    times[i].push(one(s));
                }
            }
        }
        let cells: Vec<String> = times
            .iter()
            .map(|t| {
                if t.is_empty() {
                    "—".to_owned()
                } else {
                    format!("{:.1}", median(t.clone()))
                }
            })
            .collect();
        let ratio = median(times[0].clone()) / median(times[JEMALLOC_AT].clone());
        // Two significant digits below 0.1, so that 1/80 does not print as 0.01.
        let decimals = if ratio >= 0.1 || ratio <= 0.0 {
            2
        } else {
            (1.0 - ratio.log10().floor()) as usize
        };
        println!(
            "| {} | {} | {} | {ratio:.decimals$}× |",
            row.key,
            row.unit,
            cells.join(" | ")
        );
    }
    println!("\n— : the same code as `spf` (blocks of 256 KiB and less never fault).");
}

/// Peak resident memory of this process so far, in KiB: `VmHWM`, which
/// (unlike `getrusage`'s `ru_maxrss`) starts afresh at `exec` rather than
/// carrying over the forking parent's peak.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

/// The child's side: run one row once for one subject, print the peak RSS.
fn child(row_key: &str, subject: &str) {
    let s = subject_named(subject).unwrap_or_else(|| usage(&format!("no allocator {subject}")));
    if row_key != "idle" {
        let row = rows()
            .into_iter()
            .find(|r| r.key == row_key)
            .unwrap_or_else(|| usage(&format!("no workload {row_key}")));
        s.run(|a| (row.work)(a, row.n));
    } else {
        // The process as the allocator leaves it after one small block.
        // SAFETY: a valid layout; freed at once.
        unsafe {
            let l = Layout::from_size_align(64, 8).unwrap();
            s.alloc.dealloc(s.alloc.alloc(l), l);
        }
    }
    println!("peak_rss_kib={}", peak_rss_kib());
}

/// Minor page faults of this process so far.
fn page_faults() -> i64 {
    // SAFETY: a plain struct that getrusage fills.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to it.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    u.ru_minflt
}

/// `--alone`: the selected rows for one allocator, `runs` repetitions each
/// in this process (at least two: the first is cold).
fn alone(subject: &str, runs: usize, only: Option<&str>) {
    let s = subject_named(subject).unwrap_or_else(|| usage(&format!("no allocator {subject}")));
    for row in selected(only).into_iter().filter(|r| measured(r, s)) {
        let mut warm = Vec::new();
        for i in 0..runs.max(2) {
            let faults = page_faults();
            let t = s.run(|a| (row.work)(a, row.n)).as_nanos() as f64 / row.n as f64 / row.per;
            let faults = page_faults() - faults;
            println!(
                "{} alone, repetition {i}: {t:.1} {}, {faults} page faults",
                s.name, row.unit
            );
            if i > 0 {
                warm.push(t);
            }
        }
        println!(
            "| {} | {} alone | {:.1} {} (median of {} after the first) |",
            row.key,
            s.name,
            median(warm.clone()),
            row.unit,
            warm.len()
        );
    }
}

fn child_rss_mib(row_key: &str, subject: &str) -> String {
    let out = Command::new(std::env::current_exe().expect("the running binary"))
        .args(["--child", row_key, subject])
        .output()
        .expect("run a child");
    let text = String::from_utf8_lossy(&out.stdout);
    match text
        .trim()
        .strip_prefix("peak_rss_kib=")
        .and_then(|v| v.parse::<f64>().ok())
    {
        Some(kib) if out.status.success() => format!("{:.1}", kib / 1024.0),
        _ => format!("failed ({})", out.status),
    }
}

fn rss_table(only: Option<&str>) {
    println!("\n### Peak resident memory, MiB (one child process per allocator and workload)\n");
    let names: Vec<&str> = SUBJECTS.iter().map(|s| s.name).collect();
    println!("| workload | {} |", names.join(" | "));
    println!("|---|{}", "---|".repeat(SUBJECTS.len()));
    let keys =
        std::iter::once("idle").chain(selected(only).into_iter().filter(|r| r.rss).map(|r| r.key));
    for key in keys {
        let large = rows().iter().any(|r| r.key == key && r.large);
        let cells: Vec<String> = SUBJECTS
            .iter()
            .map(|s| {
                if s.large_only && !large {
                    "—".to_owned()
                } else {
                    child_rss_mib(key, s.name)
                }
            })
            .collect();
        println!("| {key} | {} |", cells.join(" | "));
    }
    println!(
        "\nidle: the process after one 64 B block (binary, libraries, the allocator's start-up)."
    );
}

/// Median GiB/s of first touch of `len` bytes, and the faults one run took.
fn touch_rate(what: Touched, len: usize, threads: usize, runs: usize) -> (f64, u64) {
    let mut secs = Vec::new();
    let mut faults = 0;
    for _ in 0..runs {
        let (t, f) = first_touch(what, len, threads);
        secs.push(t.as_secs_f64());
        faults = f;
    }
    (len as f64 / median(secs) / (1u64 << 30) as f64, faults)
}

fn fault_table(args: &Args) {
    let len = args.mib << 20;
    let threads = &args.threads;
    println!(
        "\n### First touch of a fresh {} MiB region, one byte per 4 KiB page: GiB/s (median of {} runs)\n",
        args.mib, args.runs
    );
    let mut header = "| granule, options | faults (1 thread) |".to_owned();
    for t in threads {
        header += &format!(" {t} thr: spec | classic | spec / classic | spec / native |");
    }
    println!("{header}");
    println!("|---|---|{}", "---|---|---|---|".repeat(threads.len()));
    let rates = |what: Touched| -> Vec<f64> {
        threads
            .iter()
            .map(|&t| touch_rate(what, len, t, args.runs).0)
            .collect()
    };
    let native = rates(Touched::Native { huge: false });
    let thp = rates(Touched::Native { huge: true });
    for (name, r) in [
        ("native (kernel demand paging)", &native),
        ("native + MADV_HUGEPAGE", &thp),
    ] {
        let cells: Vec<String> = (0..threads.len())
            .map(|i| format!("{:.2} | | | {:.2}×", r[i], r[i] / native[i]))
            .collect();
        println!("| {name} | | {} |", cells.join(" | "));
    }
    for (name, opts) in fault_options() {
        let mut faults = 0;
        let mut cells = Vec::new();
        for (i, &t) in threads.iter().enumerate() {
            let spec_mode = Touched::Spf {
                mode: Mode::Speculative,
                opts,
            };
            let classic_mode = Touched::Spf {
                mode: Mode::Classic,
                opts,
            };
            let (spec, f) = touch_rate(spec_mode, len, t, args.runs);
            let (classic, _) = touch_rate(classic_mode, len, t, args.runs);
            if i == 0 {
                faults = f;
            }
            cells.push(format!(
                "{spec:.2} | {classic:.2} | {:.2}× | {:.2}×",
                spec / classic,
                spec / native[i]
            ));
        }
        println!("| {name} | {faults} | {} |", cells.join(" | "));
    }
    println!(
        "\n+ahead: commit-ahead of 1 MiB (8 MiB for 2 MiB granules); +populate: each run faulted in by MADV_POPULATE_WRITE."
    );
}

/// Blocks of random sizes in `(max/2, max]`, 64 kept live and replaced in
/// turn, each touched on its first page; `align` above 64 KiB sends even
/// medium sizes down the large-block path. ns per replacement.
fn rotating(max: usize, align: usize, n: usize) -> f64 {
    let a = SUBJECTS[0].alloc;
    let mut live: Vec<(usize, Layout)> = Vec::new();
    let mut rng = Rng(777);
    let t = std::time::Instant::now();
    for i in 0..n {
        let size = max / 2 + 1 + (rng.next() as usize % (max / 2));
        let layout = Layout::from_size_align(size, align).unwrap();
        // SAFETY: a valid layout; each block is freed once, with its layout.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            p.write_volatile(1);
            if live.len() < 64 {
                live.push((p as usize, layout));
            } else {
                let (old, l) = std::mem::replace(&mut live[i % 64], (p as usize, layout));
                a.dealloc(old as *mut u8, l);
            }
        }
    }
    for (p, l) in live {
        // SAFETY: as above.
        unsafe { a.dealloc(p as *mut u8, l) };
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn threshold_table(runs: usize) {
    println!("\n### Medium pages vs own regions (spf; random sizes in (S/2, S], 64 live)\n");
    println!("| S | medium page, ns | own region, ns |");
    println!("|---|---|---|");
    for max in [64 << 10, 128 << 10, 256 << 10] {
        let medium = median((0..runs).map(|_| rotating(max, 16, 20_000)).collect());
        let own = median(
            (0..runs)
                .map(|_| rotating(max, 128 << 10, 20_000))
                .collect(),
        );
        println!("| {} KiB | {medium:.0} | {own:.0} |", max >> 10);
    }
}

fn main() {
    let args = parse_args();
    spf::init().expect("spf starts");
    if let Some((row, subject)) = &args.child {
        child(row, subject);
        return;
    }
    println!(
        "alloc_bench: {} CPUs, kernel {}, spf commit backend {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        spf::backend().map_or("none", |b| b.name())
    );
    let only = args.only.as_deref();
    if let Some(subject) = &args.alone {
        alone(subject, args.runs, only);
        return;
    }
    allocator_table(args.runs, only);
    rss_table(only);
    if only.is_none() {
        fault_table(&args);
    }
    if args.threshold {
        threshold_table(args.runs);
    }
}
