//! The benchmark workloads, shared by the criterion suite
//! (`benches/alloc.rs`) and the quick table (`examples/alloc_bench.rs`), so
//! that both measure the same code.
//!
//! Every allocator workload takes the allocator as a `GlobalAlloc` value, so
//! one binary compares them all; each returns the wall-clock time of `n`
//! repetitions (criterion's `iter_custom` shape). The first-touch workload
//! measures spf's fault path against the kernel's own demand paging.
//!
//! The subjects: `spf` (SpfAlloc as a program gets it: large blocks
//! committed when handed out), `spf touch` (`SpfAlloc::lazy()`: large
//! blocks committed on first touch by the speculative fault path) and
//! `spf touch classic` (the same with every fault taken by the classic,
//! locked path), then jemalloc, mimalloc and the system allocator (glibc).
//! Blocks of 256 KiB and less never fault (their segments are committed
//! when made), so the three spf subjects run the same code there and the
//! touch subjects are measured only for the large and realloc workloads.

#![allow(dead_code)] // each including binary uses a different subset

use spf::{Mode, Region, RegionOptions};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::mpsc::sync_channel;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub static SPF: spf::SpfAlloc = spf::SpfAlloc::new();
pub static SPF_TOUCH: spf::SpfAlloc = spf::SpfAlloc::lazy();
pub static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
pub static MIMALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub type Alloc = &'static (dyn GlobalAlloc + Sync);

/// One allocator under test, and the fault-path mode spf runs in meanwhile.
#[derive(Clone, Copy)]
pub struct Subject {
    pub name: &'static str,
    pub alloc: Alloc,
    pub mode: Mode,
    /// Measured only where it runs code the plain `spf` subject does not.
    pub large_only: bool,
}

impl Subject {
    /// Runs `work` with spf's fault path in this subject's mode.
    pub fn run<R>(&self, work: impl FnOnce(Alloc) -> R) -> R {
        spf::set_mode(self.mode);
        let r = work(self.alloc);
        spf::set_mode(Mode::Speculative);
        r
    }
}

const fn subject(name: &'static str, alloc: Alloc, mode: Mode, large_only: bool) -> Subject {
    Subject {
        name,
        alloc,
        mode,
        large_only,
    }
}

/// Every subject, spf's first; the baseline for ratios is `JEMALLOC_AT`.
pub const SUBJECTS: [Subject; 6] = [
    subject("spf", &SPF, Mode::Speculative, false),
    subject("spf touch", &SPF_TOUCH, Mode::Speculative, true),
    subject("spf touch classic", &SPF_TOUCH, Mode::Classic, true),
    subject("jemalloc", &JEMALLOC, Mode::Speculative, false),
    subject("mimalloc", &MIMALLOC, Mode::Speculative, false),
    subject("system", &System, Mode::Speculative, false),
];
pub const JEMALLOC_AT: usize = 3;

pub fn subject_named(name: &str) -> Option<Subject> {
    SUBJECTS.iter().copied().find(|s| s.name == name)
}

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

pub fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).expect("a valid layout")
}

fn alloc_checked(a: Alloc, l: Layout) -> *mut u8 {
    // SAFETY: callers pass layouts of non-zero size.
    let p = unsafe { a.alloc(l) };
    assert!(!p.is_null(), "out of memory for {} bytes", l.size());
    p
}

/// `n` alloc + write + free pairs of `size` bytes.
pub fn pairs(a: Alloc, size: usize, n: u64) -> Duration {
    let l = layout(size);
    let start = Instant::now();
    for i in 0..n {
        let p = alloc_checked(a, l);
        // SAFETY: a fresh block of `size` bytes, freed once with its layout.
        unsafe {
            p.write_volatile(i as u8);
            a.dealloc(black_box(p), l);
        }
    }
    start.elapsed()
}

/// Blocks in one batch.
pub const BATCH: usize = 10_000;

/// `n` rounds of: allocate `BATCH` blocks of 16 B – 1 KiB, free them in a
/// random order.
pub fn batch(a: Alloc, n: u64) -> Duration {
    let mut rng = Rng(42);
    let mut order: Vec<usize> = (0..BATCH).collect();
    let mut blocks: Vec<(usize, Layout)> = Vec::with_capacity(BATCH);
    let start = Instant::now();
    for _ in 0..n {
        for _ in 0..BATCH {
            let l = layout(16 + (rng.next() % 1009) as usize);
            blocks.push((alloc_checked(a, l) as usize, l));
        }
        for i in (1..order.len()).rev() {
            order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        for &i in &order {
            let (p, l) = blocks[i];
            // SAFETY: allocated above with this layout, freed once.
            unsafe { a.dealloc(p as *mut u8, l) };
        }
        blocks.clear();
    }
    start.elapsed()
}

/// Blocks handed from producer to consumer in one exchange.
pub const EXCHANGE: usize = 64 * 1024;

/// `n` exchanges of `EXCHANGE` blocks of 16–512 B: one thread allocates
/// and writes them, sending batches of 64; the other frees them.
pub fn exchange(a: Alloc, n: u64) -> Duration {
    const PER_SEND: usize = 64;
    let start = Instant::now();
    for _ in 0..n {
        let (tx, rx) = sync_channel::<Vec<(usize, usize)>>(16);
        std::thread::scope(|s| {
            s.spawn(move || {
                let mut rng = Rng(12345);
                for _ in 0..EXCHANGE / PER_SEND {
                    let batch = (0..PER_SEND)
                        .map(|_| {
                            let size = 16 + (rng.next() % 497) as usize;
                            let p = alloc_checked(a, layout(size));
                            // SAFETY: a fresh block.
                            unsafe { p.write_volatile(1) };
                            (p as usize, size)
                        })
                        .collect();
                    tx.send(batch).expect("the consumer is alive");
                }
            });
            s.spawn(move || {
                while let Ok(batch) = rx.recv() {
                    for (p, size) in batch {
                        // SAFETY: allocated by the producer with this layout.
                        unsafe { a.dealloc(p as *mut u8, layout(size)) };
                    }
                }
            });
        });
    }
    start.elapsed()
}

/// Slots in the larson-like table, and replacements per thread per run.
pub const LARSON_SLOTS: usize = 4096;
pub const LARSON_OPS: usize = 20_000;

/// larson-like: `n` runs of `threads` threads each replacing random slots
/// of one shared table with new blocks of 16 B – 4 KiB, freeing what was
/// there (often another thread's block). The table starts and ends empty.
pub fn larson(a: Alloc, threads: usize, n: u64) -> Duration {
    let table: Vec<Mutex<(usize, usize)>> = (0..LARSON_SLOTS).map(|_| Mutex::new((0, 0))).collect();
    let start = Instant::now();
    for round in 0..n {
        std::thread::scope(|s| {
            for t in 0..threads {
                let table = &table;
                s.spawn(move || {
                    let mut rng = Rng(round * 64 + t as u64 + 7);
                    for _ in 0..LARSON_OPS {
                        let size = 16 + (rng.next() % 4081) as usize;
                        let p = alloc_checked(a, layout(size));
                        // SAFETY: a fresh block.
                        unsafe { p.write_volatile(1) };
                        let slot = &table[(rng.next() % LARSON_SLOTS as u64) as usize];
                        let (old, old_size) =
                            std::mem::replace(&mut *slot.lock().unwrap(), (p as usize, size));
                        if old != 0 {
                            // SAFETY: a block put in the table with this size.
                            unsafe { a.dealloc(old as *mut u8, layout(old_size)) };
                        }
                    }
                });
            }
        });
    }
    let elapsed = start.elapsed();
    for slot in &table {
        let (p, size) = std::mem::take(&mut *slot.lock().unwrap());
        if p != 0 {
            // SAFETY: as above.
            unsafe { a.dealloc(p as *mut u8, layout(size)) };
        }
    }
    elapsed
}

/// Strings in one hand-off batch, and what one batch's strings hold.
pub const HANDOFF: usize = 10_000;

/// `n` hand-offs: one thread allocates `HANDOFF` strings of 8–64 bytes
/// (written whole, as `String::from` would) and sends the batch to a
/// second thread, which drops them — every free is remote. Both threads
/// live for all `n` batches, as a producer and a consumer would.
pub fn handoff(a: Alloc, n: u64) -> Duration {
    let (tx, rx) = sync_channel::<Vec<(usize, usize)>>(2);
    let start = Instant::now();
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut rng = Rng(99);
            for _ in 0..n {
                let batch = (0..HANDOFF)
                    .map(|i| {
                        let len = 8 + (rng.next() % 57) as usize;
                        let p = alloc_checked(a, Layout::from_size_align(len, 1).unwrap());
                        // SAFETY: a fresh block of `len` bytes.
                        unsafe { p.write_bytes(i as u8, len) };
                        (p as usize, len)
                    })
                    .collect();
                tx.send(batch).expect("the consumer is alive");
            }
        });
        s.spawn(move || {
            while let Ok(batch) = rx.recv() {
                for (p, len) in batch {
                    // SAFETY: allocated by the producer with this layout.
                    unsafe { a.dealloc(p as *mut u8, Layout::from_size_align_unchecked(len, 1)) };
                }
            }
        });
    });
    start.elapsed()
}

/// Slots of the lock-free larson table, and replacements per thread per
/// repetition.
pub const LARSON_FREE_SLOTS: usize = 8192;
pub const LARSON_FREE_OPS: usize = 50_000;

/// larson with long-lived threads and no lock per slot (the shape of
/// mimalloc-bench's larson and xmalloc-test): `threads` threads, alive for
/// all `n` repetitions, each allocate a block of 16 B – 1 KiB, write its
/// size in its first word, and swap it into a random slot of one shared
/// table of atomics; the block swapped out (most often another thread's)
/// is freed, its layout read back from its first word. The table starts
/// and ends empty.
pub fn larson_free(a: Alloc, threads: usize, n: u64) -> Duration {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let table: Vec<AtomicUsize> = (0..LARSON_FREE_SLOTS)
        .map(|_| AtomicUsize::new(0))
        .collect();
    let free = |p: usize| {
        if p != 0 {
            // SAFETY: a block put in the table with its size in its first
            // word, taken out of the table by exactly one swap.
            unsafe {
                let size = (p as *const usize).read();
                a.dealloc(p as *mut u8, layout(size));
            }
        }
    };
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let table = &table;
            s.spawn(move || {
                let mut rng = Rng(t as u64 * 7919 + 13);
                for _ in 0..n as usize * LARSON_FREE_OPS {
                    let size = 16 + (rng.next() % 1009) as usize;
                    let p = alloc_checked(a, layout(size));
                    // SAFETY: a fresh block of at least 16 bytes, 8-aligned.
                    unsafe { (p as *mut usize).write(size) };
                    let slot = &table[(rng.next() % LARSON_FREE_SLOTS as u64) as usize];
                    // AcqRel: the swap publishes our block's size word and
                    // acquires the one written by the thread that stored the
                    // block we take out.
                    free(slot.swap(p as usize, Ordering::AcqRel));
                }
            });
        }
    });
    let elapsed = start.elapsed();
    for slot in &table {
        free(slot.swap(0, Ordering::Acquire));
    }
    elapsed
}

/// `n` rounds of: allocate `size` bytes, write every 4 KiB page, free.
pub fn large(a: Alloc, size: usize, n: u64) -> Duration {
    let l = layout(size);
    let start = Instant::now();
    for _ in 0..n {
        let p = alloc_checked(a, l);
        // SAFETY: every page written lies inside the block; freed once.
        unsafe {
            for off in (0..size).step_by(4096) {
                p.add(off).write_volatile(1);
            }
            a.dealloc(black_box(p), l);
        }
    }
    start.elapsed()
}

/// Where realloc growth stops.
pub const GROWTH_TO: usize = 64 << 20;

/// `n` rounds of a Vec's doubling from 16 B to `GROWTH_TO`, writing the
/// last byte of each size, done through the allocator under test.
pub fn realloc_growth(a: Alloc, n: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        let mut cap = 16usize;
        let mut p = alloc_checked(a, layout(cap));
        while cap < GROWTH_TO {
            // SAFETY: `p` holds `cap` bytes; realloc keeps the alignment of
            // the old layout and returns a block of `2 * cap` bytes.
            unsafe {
                p.add(cap - 1).write_volatile(1);
                p = a.realloc(p, layout(cap), cap * 2);
            }
            assert!(!p.is_null(), "out of memory growing to {} bytes", cap * 2);
            cap *= 2;
        }
        // SAFETY: the final block, freed once with its layout.
        unsafe { a.dealloc(black_box(p), layout(cap)) };
    }
    start.elapsed()
}

/// What first touch is measured on.
#[derive(Clone, Copy)]
pub enum Touched {
    /// A plain anonymous mapping: the kernel's demand paging.
    Native { huge: bool },
    /// A fresh spf region, its faults taken in `mode`.
    Spf { mode: Mode, opts: RegionOptions },
}

pub const PAGE: usize = 4096;

/// Touches one byte per page of `[p, p + len)` from `threads` threads, each
/// on its own contiguous slice.
pub fn touch_pages(p: *mut u8, len: usize, threads: usize) -> Duration {
    let base = p as usize;
    let slice = (len / threads) & !(PAGE - 1);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut off = t * slice;
                while off < (t + 1) * slice {
                    // SAFETY: inside the mapping or region the caller owns.
                    unsafe { ((base + off) as *mut u8).write_volatile(1) };
                    off += PAGE;
                }
            });
        }
    });
    start.elapsed()
}

/// First touch of one fresh `len`-byte mapping or region from `threads`
/// threads: the time, and spf faults taken (0 for native).
pub fn first_touch(what: Touched, len: usize, threads: usize) -> (Duration, u64) {
    match what {
        Touched::Native { huge } => {
            let mut map = memmap2::MmapMut::map_anon(len).expect("mmap");
            if huge {
                // Advice only: without THP the row measures 4 KiB pages.
                let _ = map.advise(memmap2::Advice::HugePage);
            }
            (touch_pages(map.as_mut_ptr(), len, threads), 0)
        }
        Touched::Spf { mode, opts } => {
            let region = Region::reserve(len, opts).expect("reserve");
            spf::set_mode(mode);
            let before = spf::stats();
            let elapsed = touch_pages(region.as_ptr(), len, threads);
            let faults = spf::stats().since(&before).faults;
            spf::set_mode(Mode::Speculative);
            (elapsed, faults)
        }
    }
}

/// The fault-path variants: granules of 4 KiB, 64 KiB and 2 MiB, each
/// bare, with commit-ahead (1 MiB, or 8 MiB for 2 MiB granules: a fault
/// commits a growing run of granules), and with commit-ahead plus populate
/// (the run is also faulted in by `MADV_POPULATE_WRITE` at once).
pub fn fault_options() -> Vec<(String, RegionOptions)> {
    let mut v = Vec::new();
    for (granule, ahead) in [
        (4usize << 10, 1usize << 20),
        (64 << 10, 1 << 20),
        (2 << 20, 8 << 20),
    ] {
        let g = if granule >= 1 << 20 {
            format!("{} MiB", granule >> 20)
        } else {
            format!("{} KiB", granule >> 10)
        };
        let bare = RegionOptions::default().granule(granule);
        v.push((g.clone(), bare));
        v.push((format!("{g} +ahead"), bare.commit_ahead(ahead)));
        v.push((
            format!("{g} +ahead +populate"),
            bare.commit_ahead(ahead).populate(true),
        ));
    }
    v
}

/// Every first-touch subject: native demand paging (plain and with
/// `MADV_HUGEPAGE`), then each of `fault_options` speculative and classic.
pub fn fault_variants() -> Vec<(String, Touched)> {
    let mut v = vec![
        ("native".to_owned(), Touched::Native { huge: false }),
        ("native THP".to_owned(), Touched::Native { huge: true }),
    ];
    for (name, opts) in fault_options() {
        for (mode, m) in [(Mode::Speculative, "spec"), (Mode::Classic, "classic")] {
            v.push((format!("{m} {name}"), Touched::Spf { mode, opts }));
        }
    }
    v
}

/// Threads of the mixed torture workload.
pub const TORTURE_THREADS: usize = 8;
/// Waves of threads per repetition (each wave's threads exit and new ones
/// start: thread churn).
pub const TORTURE_WAVES: usize = 4;
/// Operations per thread per wave.
pub const TORTURE_OPS: usize = 20_000;
/// Blocks each thread holds at once.
pub const TORTURE_SLOTS: usize = 256;
/// Slots of the table through which blocks change threads.
pub const TORTURE_SHARED: usize = 1024;

/// A size for the torture workload, 1 B – 32 MiB, most of them small: 1 in
/// 4,096 in 4–32 MiB, 1 in 256 in 256 KiB–4 MiB, 1 in 16 in 1–256 KiB,
/// the rest 1 B–1 KiB.
pub fn torture_size(rng: &mut Rng) -> usize {
    let r = rng.next();
    let span = |lo: usize, hi: usize, x: u64| lo + (x as usize % (hi - lo));
    match r % 4096 {
        0 => span(4 << 20, 32 << 20, r >> 12),
        1..=16 => span(256 << 10, 4 << 20, r >> 12),
        17..=272 => span(1 << 10, 256 << 10, r >> 12),
        _ => span(1, 1 << 10, r >> 12),
    }
}

/// Writes one byte per 4 KiB page of `[p + from, p + to)` and the last.
///
/// # Safety
/// `p` is a live block of at least `to` bytes.
pub unsafe fn torture_touch(p: *mut u8, from: usize, to: usize) {
    let mut off = from;
    while off < to {
        // SAFETY: inside the block (the caller's contract).
        unsafe { p.add(off).write_volatile(off as u8) };
        off += 4096;
    }
    if to > from {
        // SAFETY: as above.
        unsafe { p.add(to - 1).write_volatile(1) };
    }
}

/// The mixed torture: `n` repetitions of `TORTURE_WAVES` waves of
/// `TORTURE_THREADS` threads (thread churn), each holding up to 256 blocks
/// of 1 B – 32 MiB (every page touched) and replacing them: a quarter
/// grow or shrink by `realloc`, a quarter go to another thread through a
/// lock-free table (the block that was there is freed here: cross-thread
/// frees), the rest are freed by their own thread. Once per repetition a
/// thread forks; the child allocates and frees with the same allocator and
/// exits. What a thread holds when it exits goes to the table or is freed.
pub fn torture(a: Alloc, n: u64) -> Duration {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // Blocks in the table carry their size in their first word (≥ 8 B).
    let shared: Vec<AtomicUsize> = (0..TORTURE_SHARED).map(|_| AtomicUsize::new(0)).collect();
    let free_sized = |p: usize| {
        if p != 0 {
            // SAFETY: a block put in the table with its size in its first
            // word, taken out of the table by exactly one swap.
            unsafe {
                let size = (p as *const usize).read();
                a.dealloc(p as *mut u8, layout(size));
            }
        }
    };
    let start = Instant::now();
    for rep in 0..n {
        for wave in 0..TORTURE_WAVES {
            std::thread::scope(|s| {
                for t in 0..TORTURE_THREADS {
                    let shared = &shared;
                    s.spawn(move || {
                        let seed = (rep * 1_000 + wave as u64 * 100 + t as u64) * 7919 + 17;
                        let mut rng = Rng(seed);
                        let mut held: Vec<(usize, usize)> = vec![(0, 0); TORTURE_SLOTS];
                        let fork_at = (wave == 1 && t == 0).then_some(TORTURE_OPS / 2);
                        for op in 0..TORTURE_OPS {
                            if Some(op) == fork_at {
                                torture_fork(a);
                            }
                            let i = (rng.next() % TORTURE_SLOTS as u64) as usize;
                            let (p, size) = held[i];
                            if p != 0 {
                                match rng.next() % 4 {
                                    0 => {
                                        let new = torture_size(&mut rng);
                                        // SAFETY: a live block of `size`
                                        // bytes with this layout.
                                        let q =
                                            unsafe { a.realloc(p as *mut u8, layout(size), new) };
                                        assert!(!q.is_null(), "realloc to {new} bytes failed");
                                        // SAFETY: q holds `new` bytes.
                                        unsafe { torture_touch(q, size.min(new), new) };
                                        held[i] = (q as usize, new);
                                        continue;
                                    }
                                    1 if size >= 8 => {
                                        // SAFETY: a live block of ≥ 8 bytes.
                                        unsafe { (p as *mut usize).write(size) };
                                        let k = (rng.next() % TORTURE_SHARED as u64) as usize;
                                        // AcqRel: publishes the size word,
                                        // acquires the taken block's.
                                        free_sized(shared[k].swap(p, Ordering::AcqRel));
                                    }
                                    // SAFETY: a live block of this layout.
                                    _ => unsafe { a.dealloc(p as *mut u8, layout(size)) },
                                }
                            }
                            let size = torture_size(&mut rng);
                            let q = alloc_checked(a, layout(size));
                            // SAFETY: a fresh block of `size` bytes.
                            unsafe { torture_touch(q, 0, size) };
                            held[i] = (q as usize, size);
                        }
                        for (k, (p, size)) in held.into_iter().enumerate() {
                            if p == 0 {
                                continue;
                            }
                            if size >= 8 && k % 2 == 0 {
                                // SAFETY: as above.
                                unsafe { (p as *mut usize).write(size) };
                                free_sized(shared[k].swap(p, Ordering::AcqRel));
                            } else {
                                // SAFETY: a live block of this layout.
                                unsafe { a.dealloc(p as *mut u8, layout(size)) };
                            }
                        }
                    });
                }
            });
        }
    }
    let elapsed = start.elapsed();
    for slot in &shared {
        free_sized(slot.swap(0, Ordering::Acquire));
    }
    elapsed
}

/// Forks from inside the torture workload: the child allocates and frees
/// blocks of every size range with the allocator under test (whose locks
/// its fork handlers took) and exits at once; the parent waits for it.
fn torture_fork(a: Alloc) {
    // SAFETY: the child only allocates, frees and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let mut rng = Rng(99);
        for _ in 0..2_000 {
            let size = torture_size(&mut rng);
            let p = alloc_checked(a, layout(size));
            // SAFETY: a fresh block of `size` bytes, freed once.
            unsafe {
                torture_touch(p, 0, size);
                a.dealloc(p, layout(size));
            }
        }
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the forked child failed ({status:#x})"
    );
}
