//! Where spf's resident memory sits on the larson rows of `alloc_bench`
//! and on its mixed torture: the same workloads (larson-like, a mutex per
//! slot and threads made afresh each round; lock-free larson, long-lived
//! threads; the torture, 1 B – 32 MiB with `realloc`, blocks handed
//! between threads and threads made afresh each wave, without its `fork`),
//! paused at checkpoints — every thread parked at a barrier — while the
//! main thread maps every page (`spf::residency`). Prints the map taken
//! when the process's resident memory was highest (`SERIES=1`: a line per
//! checkpoint too).
//!
//! ```text
//! cargo run --release --example residency -- [larson|free|torture] [threads]
//! ```

use spf::residency::{residency, Residency, PLACES};

// The torture's sizes, touch and random numbers are the benchmark's own.
#[path = "../benches/workloads/mod.rs"]
mod workloads;
use std::alloc::{alloc, dealloc, realloc};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use workloads::{
    layout, torture_size, torture_touch, Rng, TORTURE_OPS, TORTURE_SHARED, TORTURE_SLOTS,
};

#[global_allocator]
static GLOBAL: spf::SpfAlloc = spf::SpfAlloc::new();

/// Checkpoints per thread run: 8, or 1 (at the end only, the threads
/// scheduled as they come) with `CHECKS=1` in the environment.
fn checks() -> usize {
    if std::env::var_os("CHECKS").is_some_and(|v| v == "1") {
        1
    } else {
        8
    }
}

fn snapshot(best: &Mutex<Option<(String, Residency)>>, at: String) {
    // SAFETY: every other thread is parked at the barrier.
    let r = unsafe { residency() };
    if std::env::var_os("SERIES").is_some() {
        let sum = |f: fn(&spf::residency::PageBytes) -> u64| -> f64 {
            r.pages.iter().flatten().map(f).sum::<u64>() as f64 / (1 << 20) as f64
        };
        println!(
            "{at}: process {:.1} resident pages {:.1} live {:.1} remote {:.1} free {:.1} pages {} pool dirty {:.1}",
            r.process as f64 / (1 << 20) as f64,
            sum(|e| e.resident),
            sum(|e| e.live),
            sum(|e| e.remote),
            sum(|e| e.free),
            sum(|e| e.pages) * (1 << 20) as f64,
            (r.pages[4][0].resident + r.pages[4][1].resident) as f64 / (1 << 20) as f64,
        );
    }
    let mut b = best.lock().unwrap();
    if b.as_ref().is_none_or(|(_, old)| r.process > old.process) {
        *b = Some((at, r));
    }
}

fn larson(threads: usize, best: &Mutex<Option<(String, Residency)>>) {
    const SLOTS: usize = 4096;
    const OPS: usize = 20_000;
    let table: Vec<Mutex<(usize, usize)>> = (0..SLOTS).map(|_| Mutex::new((0, 0))).collect();
    for round in 0..3u64 {
        let barrier = Barrier::new(threads + 1);
        std::thread::scope(|s| {
            for t in 0..threads {
                let (table, barrier) = (&table, &barrier);
                s.spawn(move || {
                    let mut rng = Rng(round * 64 + t as u64 + 7);
                    for i in 0..OPS {
                        let size = 16 + (rng.next() % 4081) as usize;
                        // SAFETY: a valid layout; the block is freed once.
                        let p = unsafe { alloc(layout(size)) };
                        // SAFETY: a fresh block.
                        unsafe { p.write_volatile(1) };
                        let slot = &table[(rng.next() % SLOTS as u64) as usize];
                        let (old, old_size) =
                            std::mem::replace(&mut *slot.lock().unwrap(), (p as usize, size));
                        if old != 0 {
                            // SAFETY: put in the table with this size.
                            unsafe { dealloc(old as *mut u8, layout(old_size)) };
                        }
                        if (i + 1) % (OPS / checks()) == 0 {
                            barrier.wait();
                            barrier.wait();
                        }
                    }
                });
            }
            for c in 0..checks() {
                barrier.wait();
                snapshot(best, format!("round {round}, checkpoint {c}"));
                barrier.wait();
            }
        });
    }
}

fn larson_free(threads: usize, best: &Mutex<Option<(String, Residency)>>) {
    const SLOTS: usize = 8192;
    const OPS: usize = 100_000;
    let table: Vec<AtomicUsize> = (0..SLOTS).map(|_| AtomicUsize::new(0)).collect();
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (table, barrier) = (&table, &barrier);
            s.spawn(move || {
                let mut rng = Rng(t as u64 * 7919 + 13);
                for i in 0..OPS {
                    let size = 16 + (rng.next() % 1009) as usize;
                    // SAFETY: a valid layout.
                    let p = unsafe { alloc(layout(size)) };
                    // SAFETY: a fresh block of at least 16 bytes.
                    unsafe { (p as *mut usize).write(size) };
                    let old = table[(rng.next() % SLOTS as u64) as usize]
                        .swap(p as usize, Ordering::AcqRel);
                    if old != 0 {
                        // SAFETY: its size in its first word; taken once.
                        unsafe {
                            let size = (old as *const usize).read();
                            dealloc(old as *mut u8, layout(size));
                        }
                    }
                    if (i + 1) % (OPS / checks()) == 0 {
                        barrier.wait();
                        barrier.wait();
                    }
                }
            });
        }
        for c in 0..checks() {
            barrier.wait();
            snapshot(best, format!("checkpoint {c}"));
            barrier.wait();
        }
    });
}

/// The mixed torture of `alloc_bench` (sizes 1 B – 32 MiB, a quarter
/// resized by `realloc`, a quarter handed to other threads through a
/// lock-free table, threads made afresh each wave), without its `fork`.
fn torture(threads: usize, best: &Mutex<Option<(String, Residency)>>) {
    const SLOTS: usize = TORTURE_SLOTS;
    const SHARED: usize = TORTURE_SHARED;
    const OPS: usize = TORTURE_OPS;
    let free_sized = |p: usize| {
        if p != 0 {
            // SAFETY: a block put in the table with its size in its first
            // word, taken out by exactly one swap.
            unsafe { dealloc(p as *mut u8, layout((p as *const usize).read())) };
        }
    };
    let shared: Vec<AtomicUsize> = (0..SHARED).map(|_| AtomicUsize::new(0)).collect();
    for wave in 0..4u64 {
        let barrier = Barrier::new(threads + 1);
        std::thread::scope(|s| {
            for t in 0..threads {
                let (shared, barrier) = (&shared, &barrier);
                s.spawn(move || {
                    let mut rng = Rng((wave * 100 + t as u64) * 7919 + 17);
                    let mut held = vec![(0usize, 0usize); SLOTS];
                    for op in 0..OPS {
                        let i = (rng.next() % SLOTS as u64) as usize;
                        let (p, size) = held[i];
                        let mut replace = true;
                        if p != 0 {
                            match rng.next() % 4 {
                                0 => {
                                    let new = torture_size(&mut rng);
                                    // SAFETY: a live block of this layout;
                                    // `new` is at least 1.
                                    let q = unsafe { realloc(p as *mut u8, layout(size), new) };
                                    assert!(!q.is_null());
                                    // SAFETY: q holds `new` bytes.
                                    unsafe { torture_touch(q, size.min(new), new) };
                                    held[i] = (q as usize, new);
                                    replace = false;
                                }
                                1 if size >= 8 => {
                                    // SAFETY: a live block of ≥ 8 bytes.
                                    unsafe { (p as *mut usize).write(size) };
                                    let k = (rng.next() % SHARED as u64) as usize;
                                    free_sized(shared[k].swap(p, Ordering::AcqRel));
                                }
                                // SAFETY: a live block of this layout.
                                _ => unsafe { dealloc(p as *mut u8, layout(size)) },
                            }
                        }
                        if replace {
                            let size = torture_size(&mut rng);
                            // SAFETY: a layout of at least 1 byte.
                            let q = unsafe { alloc(layout(size)) };
                            assert!(!q.is_null());
                            // SAFETY: a fresh block of `size` bytes.
                            unsafe { torture_touch(q, 0, size) };
                            held[i] = (q as usize, size);
                        }
                        if (op + 1) % (OPS / checks()) == 0 {
                            barrier.wait();
                            barrier.wait();
                        }
                    }
                    for (k, (p, size)) in held.into_iter().enumerate() {
                        if p != 0 && size >= 8 && k % 2 == 0 {
                            // SAFETY: as above.
                            unsafe { (p as *mut usize).write(size) };
                            free_sized(shared[k].swap(p, Ordering::AcqRel));
                        } else if p != 0 {
                            // SAFETY: a live block of this layout.
                            unsafe { dealloc(p as *mut u8, layout(size)) };
                        }
                    }
                });
            }
            for c in 0..checks() {
                barrier.wait();
                snapshot(best, format!("wave {wave}, checkpoint {c}"));
                barrier.wait();
            }
        });
    }
    for slot in &shared {
        free_sized(slot.swap(0, Ordering::Acquire));
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "larson".into());
    let threads: usize = args.next().and_then(|t| t.parse().ok()).unwrap_or(8);
    let best = Mutex::new(None);
    match which.as_str() {
        "free" => larson_free(threads, &best),
        "torture" => torture(threads, &best),
        _ => larson(threads, &best),
    }
    let (at, r) = best.into_inner().unwrap().expect("a snapshot");
    let s = spf::alloc_stats();
    println!(
        "{which} T={threads}: highest RSS at {at}: process {:.1} MiB",
        mib(r.process)
    );
    println!("| place | kind | pages | resident | live | remote | free carved | resident uncarved | full pages |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut total = 0;
    for (i, place) in PLACES.iter().enumerate() {
        for (k, kind) in ["small", "medium"].iter().enumerate() {
            let e = r.pages[i][k];
            if e.pages == 0 {
                continue;
            }
            total += e.resident;
            println!(
                "| {place} | {kind} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
                e.pages,
                mib(e.resident),
                mib(e.live),
                mib(e.remote),
                mib(e.free),
                mib(e.uncarved),
                e.full
            );
        }
    }
    println!(
        "segments {} headers {:.2} MiB; pages resident {:.2} MiB; other (binary, stacks, large, metadata) {:.2} MiB",
        r.segments,
        mib(r.headers),
        mib(total),
        mib(r.process.saturating_sub(total + r.headers))
    );
    let idle: Vec<String> = r
        .idle_by_class
        .iter()
        .enumerate()
        .filter(|(_, &b)| b >= 256 << 10)
        .map(|(c, &b)| format!("{c}:{:.2}", mib(b)))
        .collect();
    println!(
        "resident not live by class (MiB, ≥ 0.25): {}",
        idle.join(" ")
    );
    println!(
        "pages_handed_over {} pages_reclaimed {} page_runs_purged {} peak VmHWM {}",
        s.pages_handed_over,
        s.pages_reclaimed,
        s.page_runs_purged,
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("VmHWM"))
            .unwrap_or("")
    );
}
