//! A quick side-by-side of SpfAlloc against jemalloc, mimalloc and the
//! system allocator, each called through its `GlobalAlloc` value in one
//! process (the full criterion suite is separate):
//!
//! - ns per alloc+free pair of 16 B, 256 B and 4 KiB (one thread);
//! - ns per block of a two-thread exchange (one thread allocates, the other
//!   frees);
//! - µs per alloc + touch every 4 KiB page + free of 1 MiB and 16 MiB.
//!
//! ```text
//! cargo run --release --example alloc_bench -- [--runs 5]
//! ```
//!
//! Prints a markdown table of medians, and the ratio to jemalloc.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

static SPF: spf::SpfAlloc = spf::SpfAlloc::new();
static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
static MIMALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
static SYSTEM: System = System;

type Alloc = &'static (dyn GlobalAlloc + Sync);

fn pairs(a: Alloc, size: usize, n: usize) -> f64 {
    let layout = Layout::from_size_align(size, 8).unwrap();
    let t = Instant::now();
    for i in 0..n {
        // SAFETY: a valid layout; the block is written and freed once.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            p.write_volatile(i as u8);
            a.dealloc(p, layout);
        }
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

/// One thread allocates blocks of 16–512 B and sends them in batches; the
/// other frees them.
fn exchange(a: Alloc, n: usize) -> f64 {
    const BATCH: usize = 64;
    let (tx, rx) = sync_channel::<Vec<(usize, usize)>>(64);
    let t = Instant::now();
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut x = 12345u64;
            for _ in 0..n / BATCH {
                let mut batch = Vec::with_capacity(BATCH);
                for _ in 0..BATCH {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let size = 16 + (x % 497) as usize;
                    let layout = Layout::from_size_align(size, 8).unwrap();
                    // SAFETY: a valid layout.
                    let p = unsafe { a.alloc(layout) };
                    assert!(!p.is_null());
                    // SAFETY: a fresh block.
                    unsafe { p.write_volatile(1) };
                    batch.push((p as usize, size));
                }
                tx.send(batch).unwrap();
            }
        });
        s.spawn(move || {
            while let Ok(batch) = rx.recv() {
                for (p, size) in batch {
                    // SAFETY: allocated above with this layout, freed once.
                    unsafe { a.dealloc(p as *mut u8, Layout::from_size_align(size, 8).unwrap()) };
                }
            }
        });
    });
    t.elapsed().as_nanos() as f64 / (n / BATCH * BATCH) as f64
}

fn large(a: Alloc, size: usize, n: usize) -> f64 {
    let layout = Layout::from_size_align(size, 8).unwrap();
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: a valid layout; every page written, then freed once.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            for off in (0..size).step_by(4096) {
                p.add(off).write_volatile(1);
            }
            a.dealloc(p, layout);
        }
    }
    t.elapsed().as_nanos() as f64 / n as f64 / 1000.0
}

/// Blocks of random sizes in `(max/2, max]`, 64 kept live and replaced in
/// turn, each touched on its first page; `align` above 64 KiB sends even
/// medium sizes down the large-block path. ns per replacement.
fn rotating(a: Alloc, max: usize, align: usize, n: usize) -> f64 {
    let mut live: Vec<(usize, Layout)> = Vec::new();
    let mut x = 777u64;
    let t = Instant::now();
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let size = max / 2 + 1 + (x as usize % (max / 2));
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

/// Where the large-block threshold sits: the same sizes served from medium
/// pages and from regions of their own.
fn threshold_table(runs: usize) {
    println!("\n### Medium pages vs own regions (spf; random sizes in (S/2, S], 64 live)\n");
    println!("| S | medium page, ns | own region, ns |");
    println!("|---|---|---|");
    for max in [64 << 10, 128 << 10, 256 << 10] {
        let medium = median((0..runs).map(|_| rotating(&SPF, max, 16, 20_000)).collect());
        let own = median(
            (0..runs)
                .map(|_| rotating(&SPF, max, 128 << 10, 20_000))
                .collect(),
        );
        println!("| {} KiB | {medium:.0} | {own:.0} |", max >> 10);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut runs = 5;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--runs", Some(n)) if n > 0 => runs = n,
            _ => {
                eprintln!("usage: alloc_bench [--runs N]");
                std::process::exit(2);
            }
        }
    }
    let allocators: [(&str, Alloc); 4] = [
        ("spf", &SPF),
        ("jemalloc", &JEMALLOC),
        ("mimalloc", &MIMALLOC),
        ("system", &SYSTEM),
    ];
    type Work = Box<dyn Fn(Alloc) -> f64>;
    let workloads: Vec<(&str, &str, Work)> = vec![
        ("16 B pair", "ns", Box::new(|a| pairs(a, 16, 2_000_000))),
        ("256 B pair", "ns", Box::new(|a| pairs(a, 256, 2_000_000))),
        ("4 KiB pair", "ns", Box::new(|a| pairs(a, 4096, 1_000_000))),
        (
            "2-thread exchange, per block",
            "ns",
            Box::new(|a| exchange(a, 1_000_000)),
        ),
        (
            "1 MiB alloc+touch+free",
            "µs",
            Box::new(|a| large(a, 1 << 20, 2_000)),
        ),
        (
            "16 MiB alloc+touch+free",
            "µs",
            Box::new(|a| large(a, 16 << 20, 100)),
        ),
    ];
    println!(
        "alloc_bench: {} CPUs, median of {runs} runs\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| workload | unit | spf | jemalloc | mimalloc | system | spf / jemalloc |");
    println!("|---|---|---|---|---|---|---|");
    for (name, unit, work) in &workloads {
        // Interleave the allocators run by run, so that drift in the
        // machine's speed spreads over all of them.
        let mut times = vec![Vec::new(); allocators.len()];
        for &(_, a) in &allocators {
            work(a); // warm-up
        }
        for _ in 0..runs {
            for (i, &(_, a)) in allocators.iter().enumerate() {
                times[i].push(work(a));
            }
        }
        let medians: Vec<f64> = times.into_iter().map(median).collect();
        println!(
            "| {name} | {unit} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}× |",
            medians[0],
            medians[1],
            medians[2],
            medians[3],
            medians[0] / medians[1]
        );
    }
    threshold_table(runs);
    let st = spf::alloc_stats();
    println!(
        "\nspf after the run: {} bytes allocated, {} committed, {} resident",
        st.allocated, st.committed, st.resident
    );
}
