//! The allocator suite (criterion): each workload of `workloads` for
//! SpfAlloc (and, for large blocks, its commit-on-touch form in
//! speculative and classic mode) and the baselines, each called through its
//! `GlobalAlloc` value so one binary compares them all; and the fault path
//! itself against the kernel's demand paging.
//!
//! ```text
//! cargo bench --bench alloc                   # everything (about 12 minutes on 2 cores)
//! cargo bench --bench alloc -- 'small pair'   # one group
//! cargo bench --bench alloc -- 'first touch'  # the fault path
//! ```
//!
//! The quick table the README publishes comes from
//! `cargo run --release --example alloc_bench`, on the same workloads.

mod workloads;

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use std::time::Duration;
use workloads::*;

/// The subjects a workload is measured for: all of them for large blocks,
/// else those whose code differs.
fn subjects(large: bool) -> impl Iterator<Item = Subject> {
    SUBJECTS.into_iter().filter(move |s| large || !s.large_only)
}

fn small_pairs(c: &mut Criterion) {
    let mut g = c.benchmark_group("small pair");
    for size in [16, 64, 256, 1024, 4096] {
        for s in subjects(false) {
            g.bench_with_input(BenchmarkId::new(s.name, size), &size, |b, &size| {
                b.iter_custom(|n| s.run(|a| pairs(a, size, n)))
            });
        }
    }
    g.finish();
}

fn batch_mixed(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch 10k mixed");
    g.throughput(Throughput::Elements(BATCH as u64));
    for s in subjects(false) {
        g.bench_function(s.name, |b| b.iter_custom(|n| s.run(|a| batch(a, n))));
    }
    g.finish();
}

fn cross_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("cross-thread exchange");
    g.throughput(Throughput::Elements(EXCHANGE as u64));
    for s in subjects(false) {
        g.bench_function(s.name, |b| b.iter_custom(|n| s.run(|a| exchange(a, n))));
    }
    g.finish();
}

fn larson_like(c: &mut Criterion) {
    let mut g = c.benchmark_group("larson-like");
    for threads in [1usize, 2, 4, 8] {
        g.throughput(Throughput::Elements((LARSON_OPS * threads) as u64));
        for s in subjects(false) {
            g.bench_with_input(BenchmarkId::new(s.name, threads), &threads, |b, &t| {
                b.iter_custom(|n| s.run(|a| larson(a, t, n)))
            });
        }
    }
    g.finish();
}

fn handoff_batches(c: &mut Criterion) {
    let mut g = c.benchmark_group("hand-off 10k Strings");
    g.throughput(Throughput::Elements(HANDOFF as u64));
    for s in subjects(false) {
        g.bench_function(s.name, |b| b.iter_custom(|n| s.run(|a| handoff(a, n))));
    }
    g.finish();
}

fn larson_lock_free(c: &mut Criterion) {
    let mut g = c.benchmark_group("larson lock-free");
    for threads in [2usize, 8] {
        g.throughput(Throughput::Elements((LARSON_FREE_OPS * threads) as u64));
        for s in subjects(false) {
            g.bench_with_input(BenchmarkId::new(s.name, threads), &threads, |b, &t| {
                b.iter_custom(|n| s.run(|a| larson_free(a, t, n)))
            });
        }
    }
    g.finish();
}

fn large_blocks(c: &mut Criterion) {
    let mut g = c.benchmark_group("large alloc+touch+free");
    for size in [256 << 10, 1 << 20, 8 << 20, 64 << 20] {
        g.throughput(Throughput::Bytes(size as u64));
        for s in subjects(true) {
            g.bench_with_input(BenchmarkId::new(s.name, size >> 10), &size, |b, &size| {
                b.iter_custom(|n| s.run(|a| large(a, size, n)))
            });
        }
    }
    g.finish();
}

fn growth(c: &mut Criterion) {
    let mut g = c.benchmark_group("realloc growth to 64 MiB");
    for s in subjects(true) {
        g.bench_function(s.name, |b| {
            b.iter_custom(|n| s.run(|a| realloc_growth(a, n)))
        });
    }
    g.finish();
}

/// GiB/s committed by first touch of a fresh 256 MiB region or mapping.
fn fault_path(c: &mut Criterion) {
    const LEN: usize = 256 << 20;
    spf::init().expect("spf starts");
    let mut g = c.benchmark_group("first touch 256 MiB");
    g.throughput(Throughput::Bytes(LEN as u64));
    // A 4 KiB-granule run takes about half a second: ten flat samples of
    // one run each, not criterion's growing linear series.
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(6));
    for threads in [1usize, 2, 4] {
        for (name, what) in fault_variants() {
            g.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &t| {
                b.iter_custom(|n| (0..n).map(|_| first_touch(what, LEN, t).0).sum())
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = small_pairs, batch_mixed, cross_thread, larson_like, handoff_batches, larson_lock_free, large_blocks, growth, fault_path
}
criterion_main!(benches);
