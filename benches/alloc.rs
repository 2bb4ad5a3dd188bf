//! The allocator suite (criterion): each workload for SpfAlloc and the
//! baselines, each called through its `GlobalAlloc` value so one binary
//! compares them all.
//!
//! ```text
//! cargo bench --bench alloc                 # everything
//! cargo bench --bench alloc -- 'small pair' # one group
//! ```
//!
//! Workloads: alloc+free pairs of 16 B – 4 KiB; a batch of 10,000 mixed
//! small blocks freed in random order; a producer/consumer exchange; a
//! larson-like table of slots replaced by T threads; large blocks allocated,
//! touched on every page and freed; a Vec grown to 64 MiB.
//!
//! (Started for the benchmarks issue: the fault-path group, the
//! classic-mode column, the quick-table command and peak-RSS figures are
//! still to come.)

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::mpsc::sync_channel;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static SPF: spf::SpfAlloc = spf::SpfAlloc::new();
static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
static MIMALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Alloc = &'static (dyn GlobalAlloc + Sync);

const ALLOCATORS: [(&str, Alloc); 4] = [
    ("spf", &SPF),
    ("jemalloc", &JEMALLOC),
    ("mimalloc", &MIMALLOC),
    ("system", &System),
];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

fn small_pairs(c: &mut Criterion) {
    let mut g = c.benchmark_group("small pair");
    for size in [16, 64, 256, 1024, 4096] {
        for (name, a) in ALLOCATORS {
            g.bench_with_input(BenchmarkId::new(name, size), &size, |b, &size| {
                let l = layout(size);
                b.iter(|| {
                    // SAFETY: a valid layout; the block is freed once.
                    unsafe {
                        let p = a.alloc(l);
                        p.write_volatile(1);
                        a.dealloc(black_box(p), l);
                    }
                })
            });
        }
    }
    g.finish();
}

fn batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch 10k mixed");
    g.throughput(Throughput::Elements(10_000));
    for (name, a) in ALLOCATORS {
        g.bench_function(name, |b| {
            let mut rng = Rng(42);
            let mut order: Vec<usize> = (0..10_000).collect();
            b.iter(|| {
                let blocks: Vec<(usize, Layout)> = (0..10_000)
                    .map(|_| {
                        let l = layout(16 + (rng.next() % 1009) as usize);
                        // SAFETY: a valid layout.
                        (unsafe { a.alloc(l) } as usize, l)
                    })
                    .collect();
                for i in (1..order.len()).rev() {
                    order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
                }
                for &i in &order {
                    let (p, l) = blocks[i];
                    // SAFETY: allocated above with this layout, freed once.
                    unsafe { a.dealloc(p as *mut u8, l) };
                }
            })
        });
    }
    g.finish();
}

fn cross_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("cross-thread exchange");
    const N: usize = 64 * 1024;
    g.throughput(Throughput::Elements(N as u64));
    for (name, a) in ALLOCATORS {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let (tx, rx) = sync_channel::<Vec<usize>>(16);
                    std::thread::scope(|s| {
                        s.spawn(move || {
                            for _ in 0..N / 64 {
                                // SAFETY: a valid layout.
                                let batch = (0..64)
                                    .map(|_| unsafe { a.alloc(layout(64)) } as usize)
                                    .collect();
                                tx.send(batch).unwrap();
                            }
                        });
                        s.spawn(move || {
                            while let Ok(batch) = rx.recv() {
                                for p in batch {
                                    // SAFETY: allocated by the producer with this layout.
                                    unsafe { a.dealloc(p as *mut u8, layout(64)) };
                                }
                            }
                        });
                    });
                }
                start.elapsed()
            })
        });
    }
    g.finish();
}

/// larson-like: T threads each replace random slots of a shared table with
/// new blocks of random size, freeing what was there (often another
/// thread's block).
fn larson(c: &mut Criterion) {
    let mut g = c.benchmark_group("larson-like");
    const OPS: usize = 20_000;
    for threads in [1usize, 2, 4, 8] {
        g.throughput(Throughput::Elements((OPS * threads) as u64));
        for (name, a) in ALLOCATORS {
            g.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &threads| {
                let table: Vec<Mutex<(usize, usize)>> =
                    (0..1024).map(|_| Mutex::new((0, 0))).collect();
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        std::thread::scope(|s| {
                            for t in 0..threads {
                                let table = &table;
                                s.spawn(move || {
                                    let mut rng = Rng(t as u64 + 7);
                                    for _ in 0..OPS {
                                        let size = 16 + (rng.next() % 2000) as usize;
                                        // SAFETY: a valid layout.
                                        let p = unsafe { a.alloc(layout(size)) };
                                        let slot = &table[(rng.next() % 1024) as usize];
                                        let (old, old_size) = std::mem::replace(
                                            &mut *slot.lock().unwrap(),
                                            (p as usize, size),
                                        );
                                        if old != 0 {
                                            // SAFETY: a block put in the table with this size.
                                            unsafe { a.dealloc(old as *mut u8, layout(old_size)) };
                                        }
                                    }
                                });
                            }
                        });
                    }
                    start.elapsed()
                });
                for slot in &table {
                    let (p, size) = std::mem::take(&mut *slot.lock().unwrap());
                    if p != 0 {
                        // SAFETY: as above.
                        unsafe { a.dealloc(p as *mut u8, layout(size)) };
                    }
                }
            });
        }
    }
    g.finish();
}

fn large(c: &mut Criterion) {
    let mut g = c.benchmark_group("large alloc+touch+free");
    for size in [256 << 10, 1 << 20, 8 << 20, 64 << 20] {
        g.throughput(Throughput::Bytes(size as u64));
        for (name, a) in ALLOCATORS {
            g.bench_with_input(BenchmarkId::new(name, size >> 10), &size, |b, &size| {
                let l = layout(size);
                b.iter(|| {
                    // SAFETY: a valid layout; every page written; freed once.
                    unsafe {
                        let p = a.alloc(l);
                        for off in (0..size).step_by(4096) {
                            p.add(off).write_volatile(1);
                        }
                        a.dealloc(black_box(p), l);
                    }
                })
            });
        }
    }
    g.finish();
}

fn realloc_growth(c: &mut Criterion) {
    let mut g = c.benchmark_group("realloc growth to 64 MiB");
    for (name, a) in ALLOCATORS {
        g.bench_function(name, |b| {
            b.iter(|| {
                // A Vec's doubling, done through the allocator under test.
                let mut cap = 16usize;
                // SAFETY: valid layouts; each realloc keeps the old layout's
                // alignment; the final block is freed with its layout.
                unsafe {
                    let mut p = a.alloc(layout(cap));
                    while cap < 64 << 20 {
                        p.add(cap - 1).write_volatile(1);
                        p = a.realloc(p, layout(cap), cap * 2);
                        cap *= 2;
                    }
                    a.dealloc(black_box(p), layout(cap));
                }
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = small_pairs, batch, cross_thread, larson, large, realloc_growth
}
criterion_main!(benches);
