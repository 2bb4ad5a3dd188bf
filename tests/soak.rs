//! Soak: a bounded run of everything at once, with every byte
//! verified and memory accounted for at the end.
//!
//! How long: `SPF_SOAK_SECS` seconds (fractions allowed), by default 40 s
//! in release builds and 15 s in debug builds — CI runs the whole suite,
//! debug and release, on 2 cores. The long run is
//! `SPF_SOAK_SECS=600 cargo test --release --test soak -- --nocapture`
//! (`--nocapture` shows the summary line).
//!
//! What runs at once, on about 14 threads:
//! - **6 allocator workers**: random sizes (1 B – 8 MiB, mostly small) and
//!   alignments (1 B – 4 KiB, a few up to 2 MiB), some zeroed, half of them
//!   through a touch-mode allocator (`SpfAlloc::lazy()`, whose large blocks
//!   the fault handler commits); a bounded live set; `realloc`, local
//!   frees, in-place rewrites, and hand-offs to the other workers through
//!   channels, so many frees and `realloc`s are cross-thread.
//! - **Thread churn**: a spawner that keeps starting batches of short-lived
//!   threads, which allocate, free half of their blocks and hand the rest
//!   to a long-lived collector, so blocks outlive the thread (and heap)
//!   that allocated them.
//! - **Region churn**: spf regions (4 KiB, 64 KiB and 2 MiB granules, with
//!   and without commit-ahead and populate, a few non-speculative), each
//!   round's front written page-interleaved by 3 threads while the churner
//!   decommits, shrinks and regrows, recommits or re-protects the tail,
//!   and decommits, destroys or creates other regions; then every byte is
//!   checked. The fault mode switches between speculative and classic
//!   every 250 ms, so both fault paths serve these faults and the lazy
//!   blocks.
//! - **fork()** every second from the busy process: the child checks the
//!   parent's data in a region, faults new granules of its own, allocates
//!   small, medium, large and lazy large blocks, makes a region and a
//!   thread, checks all of it and `_exit`s; the parent checks the status
//!   and that the child's commits stayed in the child.
//!
//! Blocks carry a pattern derived from their id and size
//! (`common::stamped`), checked before every free and `realloc` (and the
//! kept prefix after), so any lost write, stale page or misplaced data
//! panics naming the address, offset, expected and found byte.
//!
//! What must hold at the end, once everything is joined and freed, the
//! epoch collector has been let to reclaim (`settle_epoch`) and
//! `spf::purge()` has run: no fault was fatal and
//! `faults = spf + classic + fatal`; speculative faults were served while
//! the mode was speculative
//! and classic ones while it was classic; `spf::check_invariants()`
//! passes; the allocator's `allocated` is back to its starting value
//! (within `LEAK_SLACK`, 128 KiB) and no large block is alive; and the
//! process's resident memory is at most its starting value plus what is
//! still allocated plus `RESIDENT_SLACK` (24 MiB; see there for why). A
//! watchdog aborts the process, printing the figures, if the run hangs.

mod common;

use common::alloc_suite::Rng;
use common::stamped::{check_zero, seed_of, Pattern, CHUNK};
use common::SendPtr;
use spf::{Mode, Protection, Region, RegionOptions, SpfAlloc};
use std::alloc::{GlobalAlloc, Layout};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

/// Touch mode, called directly: its large blocks are committed on first
/// touch by the fault handler, in whichever mode the churner has set.
static LAZY: SpfAlloc = SpfAlloc::lazy();

const DEBUG: bool = cfg!(debug_assertions);
const WORKERS: usize = 6;
/// Most blocks and bytes one worker keeps live.
const WORKER_BLOCKS: usize = 400;
const WORKER_BYTES: usize = if DEBUG { 24 << 20 } else { 48 << 20 };
/// Threads the region churner writes each round's front with.
const REGION_WRITERS: usize = 3;
/// Short-lived threads started at once by the spawner, and blocks each makes.
const SPAWN_BATCH: usize = 4;
const SHORT_LIVED_BLOCKS: usize = 48;
/// What the collector keeps of the short-lived threads' blocks.
const COLLECTOR_BLOCKS: usize = 2_000;
const COLLECTOR_BYTES: usize = 32 << 20;
const MODE_SWITCH_EVERY: Duration = Duration::from_millis(250);
const FORK_EVERY: Duration = Duration::from_secs(1);
/// How long a fork child may take before it counts as hung.
const CHILD_LIMIT: Duration = Duration::from_secs(60);
/// How long past the run's end the watchdog waits before it aborts.
const WATCHDOG_GRACE: Duration = Duration::from_secs(if DEBUG { 180 } else { 90 });

/// `allocated` may end this far above where it started, once every thread
/// is joined and `settle_epoch` has run: what std and crossbeam-epoch keep
/// for the threads still alive (the test's, libtest's, the watchdog's) and
/// their lazily made statics. Measured: 10–21 KiB, whatever the run's
/// length; one leaked medium block would exceed it.
const LEAK_SLACK: u64 = 128 << 10;

/// Resident memory allowed above the starting value plus what is still
/// allocated, once everything is freed and purged. What legitimately stays
/// resident (from `/proc/self/smaps` at the end of a debug run): about half
/// is the test binary's and libc's code faulted in during the run, the rest
/// spf's metadata — segment headers, thread heaps, granule-table and
/// region-map pages for the address ranges the run used — and what exited
/// threads' cached stacks touched. Measured growth: 1.5–6.9 MiB (debug and
/// release, runs of 0.5 s to 300 s; it does not grow with the run's
/// length), against a peak of 400–560 MiB during the run and 160+ MiB
/// after the same run without `spf::purge()`: the bound has 3.5× headroom
/// and still fails if freed memory is not given back.
const RESIDENT_SLACK: u64 = 24 << 20;

/// The run's figures, for the summary line and the watchdog.
struct Figures {
    ops: AtomicU64,
    bytes_verified: AtomicU64,
    handed_off: AtomicU64,
    lazy_large: AtomicU64,
    threads_spawned: AtomicU64,
    region_rounds: AtomicU64,
    regions_made: AtomicU64,
    mode_switches: AtomicU64,
    spf_while_speculative: AtomicU64,
    classic_while_speculative: AtomicU64,
    spf_while_classic: AtomicU64,
    classic_while_classic: AtomicU64,
    forks: AtomicU64,
}

static FIG: Figures = Figures {
    ops: AtomicU64::new(0),
    bytes_verified: AtomicU64::new(0),
    handed_off: AtomicU64::new(0),
    lazy_large: AtomicU64::new(0),
    threads_spawned: AtomicU64::new(0),
    region_rounds: AtomicU64::new(0),
    regions_made: AtomicU64::new(0),
    mode_switches: AtomicU64::new(0),
    spf_while_speculative: AtomicU64::new(0),
    classic_while_speculative: AtomicU64::new(0),
    spf_while_classic: AtomicU64::new(0),
    classic_while_classic: AtomicU64::new(0),
    forks: AtomicU64::new(0),
};

impl Figures {
    fn line(&self) -> String {
        format!(
            "{} allocator ops, {:.2} GiB verified, {} cross-thread hand-offs, \
             {} lazy large blocks, {} short-lived threads, {} forks, {} region rounds \
             ({} regions made, {} writer threads each), {} mode switches \
             (while speculative: {} spf + {} classic faults; while classic: {} classic + {} spf)",
            self.ops.load(Relaxed),
            self.bytes_verified.load(Relaxed) as f64 / (1u64 << 30) as f64,
            self.handed_off.load(Relaxed),
            self.lazy_large.load(Relaxed),
            self.threads_spawned.load(Relaxed),
            self.forks.load(Relaxed),
            self.region_rounds.load(Relaxed),
            self.regions_made.load(Relaxed),
            REGION_WRITERS,
            self.mode_switches.load(Relaxed),
            self.spf_while_speculative.load(Relaxed),
            self.classic_while_speculative.load(Relaxed),
            self.classic_while_classic.load(Relaxed),
            self.spf_while_classic.load(Relaxed),
        )
    }
}

fn verified(bytes: usize) {
    FIG.bytes_verified.fetch_add(bytes as u64, Relaxed);
}

fn soak_duration() -> Duration {
    let secs = match std::env::var("SPF_SOAK_SECS") {
        Ok(v) => v
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or_else(|| panic!("SPF_SOAK_SECS={v}: not a number of seconds")),
        Err(_) if DEBUG => 15.0,
        Err(_) => 40.0,
    };
    Duration::from_secs_f64(secs)
}

fn allocator(lazy: bool) -> &'static SpfAlloc {
    if lazy {
        &LAZY
    } else {
        &GLOBAL
    }
}

/// A heap block under test: filled with the pattern of `seed_of(id, size)`.
struct Block {
    p: usize,
    layout: Layout,
    id: u64,
    /// Allocated through `LAZY` (and so freed through it).
    lazy: bool,
}

fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Relaxed)
}

/// Whether `SpfAlloc` serves this layout as a large block (its own region).
fn is_large(layout: Layout) -> bool {
    layout.size() > 256 << 10 || layout.align() > 64 << 10
}

impl Block {
    fn new(size: usize, align: usize, lazy: bool, zeroed: bool) -> Block {
        let layout = Layout::from_size_align(size, align).unwrap();
        let a = allocator(lazy);
        // SAFETY: a valid layout of non-zero size.
        let p = unsafe {
            if zeroed {
                a.alloc_zeroed(layout)
            } else {
                a.alloc(layout)
            }
        };
        assert!(
            !p.is_null(),
            "allocation of {layout:?} (lazy {lazy}) failed"
        );
        assert_eq!(p as usize % align, 0, "{p:p} misaligned for {layout:?}");
        if zeroed {
            // SAFETY: a fresh block of `size` bytes.
            unsafe { check_zero(p, 0..size, "alloc_zeroed") };
            verified(size);
        }
        if lazy && is_large(layout) {
            FIG.lazy_large.fetch_add(1, Relaxed);
        }
        let b = Block {
            p: p as usize,
            layout,
            id: next_id(),
            lazy,
        };
        b.fill();
        b
    }

    fn size(&self) -> usize {
        self.layout.size()
    }

    fn pattern(&self) -> Pattern {
        Pattern::new(seed_of(self.id, self.size()), self.size())
    }

    fn fill(&self) {
        // SAFETY: our live block of `size` bytes.
        unsafe { self.pattern().fill(self.p as *mut u8, 0..self.size()) };
    }

    fn verify(&self, what: &str) {
        let (p, pattern) = (self.p as *const u8, self.pattern());
        // SAFETY: our live block; nobody else writes it.
        if unsafe { pattern.find_mismatch(p, 0..self.size()) }.is_some() {
            let what = format!(
                "{what} (block {} of {:?}, lazy {})",
                self.id, self.layout, self.lazy
            );
            // SAFETY: as above; this panics, naming the first bad byte.
            unsafe { pattern.check(p, 0..self.size(), &what) };
        }
        verified(self.size());
    }

    /// Rewrites the block with a new identity.
    fn refill(&mut self, what: &str) {
        self.verify(what);
        self.id = next_id();
        self.fill();
    }

    fn free(self, what: &str) {
        self.verify(what);
        // SAFETY: allocated by this allocator with this layout, freed once.
        unsafe { allocator(self.lazy).dealloc(self.p as *mut u8, self.layout) };
        std::mem::forget(self);
    }

    fn realloc(&mut self, new_size: usize, what: &str) {
        self.verify(what);
        let old = self.pattern();
        // SAFETY: ours, with this layout; `new_size` is non-zero and, with
        // the alignment, a valid layout.
        let p = unsafe { allocator(self.lazy).realloc(self.p as *mut u8, self.layout, new_size) };
        assert!(
            !p.is_null(),
            "realloc of {:?} to {new_size} failed",
            self.layout
        );
        assert_eq!(
            p as usize % self.layout.align(),
            0,
            "realloc lost alignment"
        );
        let kept = self.size().min(new_size);
        // SAFETY: the first `kept` bytes moved with the block.
        if unsafe { old.find_mismatch(p, 0..kept) }.is_some() {
            let what = format!(
                "{what}: after realloc of block {} from {:?} to {new_size} bytes (lazy {})",
                self.id, self.layout, self.lazy
            );
            // SAFETY: as above; this panics, naming the first bad byte.
            unsafe { old.check(p, 0..kept, &what) };
        }
        verified(kept);
        self.p = p as usize;
        self.layout = Layout::from_size_align(new_size, self.layout.align()).unwrap();
        if self.lazy && is_large(self.layout) {
            FIG.lazy_large.fetch_add(1, Relaxed);
        }
        self.id = next_id();
        self.fill();
    }
}

/// A block is only ever freed through [`Block::free`]; one dropped
/// instead would be a leak of the test's own making.
impl Drop for Block {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!(
                "block {} of {:?} dropped without being freed",
                self.id, self.layout
            );
        }
    }
}

/// Mostly small: 60 % ≤ 256 B, 25 % ≤ 8 KiB, 11 % ≤ 256 KiB, 3 % ≤ 2 MiB,
/// 1 % ≤ 8 MiB.
fn random_size(rng: &mut Rng) -> usize {
    let max = match rng.below(1000) {
        0..=599 => 256,
        600..=849 => 8 << 10,
        850..=959 => 256 << 10,
        960..=989 => 2 << 20,
        _ => 8 << 20,
    };
    1 + rng.below(max) as usize
}

/// 80 % 1–16 B, 18 % 1 B – 4 KiB, 2 % 8 KiB – 2 MiB.
fn random_align(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0..=79 => 1 << rng.below(5),
        80..=97 => 1 << rng.below(13),
        _ => 1 << (13 + rng.below(9)),
    }
}

/// One allocator worker: a bounded live set, blocks handed to and taken
/// from the other workers.
fn worker(me: usize, rx: Receiver<Block>, peers: Vec<Sender<Block>>, stop: &AtomicBool) {
    let mut rng = Rng(0x5EED_0000 + me as u64 * 0x1_0001);
    let mut live: Vec<Block> = Vec::new();
    let mut bytes = 0usize;
    let mut ops = 0u64;
    while !stop.load(Relaxed) {
        while let Ok(b) = rx.try_recv() {
            bytes += b.size();
            live.push(b);
        }
        let pick = |rng: &mut Rng, n: usize| rng.below(n as u64) as usize;
        match rng.below(100) {
            0..=34 => {
                let size = random_size(&mut rng);
                let align = random_align(&mut rng);
                let b = Block::new(size, align, rng.below(2) == 0, rng.below(7) == 0);
                bytes += size;
                live.push(b);
            }
            35..=54 if !live.is_empty() => {
                let b = live.swap_remove(pick(&mut rng, live.len()));
                bytes -= b.size();
                b.free("local free");
            }
            55..=64 if !live.is_empty() => {
                let i = pick(&mut rng, live.len());
                let old = live[i].size();
                let new = if rng.below(2) == 0 {
                    // Near the old size: the in-place paths.
                    (old + rng.below(old as u64 / 2 + 2) as usize)
                        .saturating_sub(old / 4)
                        .max(1)
                } else {
                    random_size(&mut rng)
                };
                live[i].realloc(new, "realloc");
                bytes = bytes + new - old;
            }
            65..=76 if !live.is_empty() => {
                let b = live.swap_remove(pick(&mut rng, live.len()));
                bytes -= b.size();
                let to = pick(&mut rng, peers.len());
                match peers[to].send(b) {
                    Ok(()) => {
                        FIG.handed_off.fetch_add(1, Relaxed);
                    }
                    // The peer is gone (it panicked): free it here.
                    Err(e) => e.0.free("undeliverable"),
                }
            }
            77..=84 if !live.is_empty() => {
                live[pick(&mut rng, live.len())].verify("spot check");
            }
            85..=99 if !live.is_empty() => {
                let i = pick(&mut rng, live.len());
                live[i].refill("rewrite");
            }
            _ => {}
        }
        while live.len() > WORKER_BLOCKS || bytes > WORKER_BYTES {
            let b = live.swap_remove(pick(&mut rng, live.len()));
            bytes -= b.size();
            b.free("trim");
        }
        ops += 1;
        if ops % 256 == 0 {
            FIG.ops.fetch_add(256, Relaxed);
        }
    }
    FIG.ops.fetch_add(ops % 256, Relaxed);
    // Blocks may still arrive until every peer has dropped its sender.
    drop(peers);
    for b in rx.iter() {
        b.free("received at the end");
    }
    for b in live {
        b.free("at the end");
    }
}

/// Keeps starting short-lived threads that allocate, free half of their
/// blocks and hand the rest to the collector.
fn spawner(stop: &AtomicBool, to_collector: Sender<Block>) {
    let mut n = 0u64;
    while !stop.load(Relaxed) {
        let batch: Vec<_> = (0..SPAWN_BATCH)
            .map(|_| {
                n += 1;
                let tx = to_collector.clone();
                let id = n;
                std::thread::Builder::new()
                    .name(format!("short-lived {id}"))
                    .spawn(move || short_lived(id, tx))
                    .unwrap()
            })
            .collect();
        for h in batch {
            if let Err(e) = h.join() {
                std::panic::resume_unwind(e);
            }
            FIG.threads_spawned.fetch_add(1, Relaxed);
        }
    }
}

fn short_lived(n: u64, tx: Sender<Block>) {
    let mut rng = Rng(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut mine = Vec::with_capacity(SHORT_LIVED_BLOCKS);
    for _ in 0..SHORT_LIVED_BLOCKS {
        let size = match rng.below(48) {
            0 => (256 << 10) + rng.below(2 << 20) as usize,
            1..=3 => 1 + rng.below(300 << 10) as usize,
            _ => 1 + rng.below(2048) as usize,
        };
        let align = 1 << rng.below(7);
        mine.push(Block::new(
            size,
            align,
            rng.below(2) == 0,
            rng.below(8) == 0,
        ));
    }
    for (i, b) in mine.into_iter().enumerate() {
        if i % 2 == 0 {
            b.free("short-lived thread's own free");
        } else if let Err(e) = tx.send(b) {
            e.0.free("collector gone");
        }
    }
    FIG.ops.fetch_add(2 * SHORT_LIVED_BLOCKS as u64, Relaxed);
}

/// Keeps the short-lived threads' blocks for a while (long after their
/// threads have exited), reallocs some, frees the oldest.
fn collector(rx: Receiver<Block>) {
    let mut rng = Rng(0xC011_EC70);
    let mut kept: VecDeque<Block> = VecDeque::new();
    let mut bytes = 0usize;
    for b in rx.iter() {
        bytes += b.size();
        kept.push_back(b);
        if rng.below(8) == 0 {
            let i = rng.below(kept.len() as u64) as usize;
            let old = kept[i].size();
            let new = 1 + rng.below(64 << 10) as usize;
            kept[i].realloc(new, "collector realloc");
            bytes = bytes + new - old;
        }
        while kept.len() > COLLECTOR_BLOCKS || bytes > COLLECTOR_BYTES {
            let b = kept.pop_front().unwrap();
            bytes -= b.size();
            b.free("collector");
        }
    }
    for b in kept {
        b.free("collector at the end");
    }
}

/// A region of the churner's pool: its whole length holds the pattern of
/// `content`, or reads as zero (`None`).
struct Soaked {
    r: Region,
    content: Option<u64>,
}

impl Soaked {
    fn make(rng: &mut Rng) -> Soaked {
        let (granule, most) = match rng.below(3) {
            0 => (4 << 10, 1024),
            1 => (64 << 10, 128),
            _ => (2 << 20, 8),
        };
        let len = granule * (1 + rng.below(most) as usize);
        let ahead = [0, 4 * granule, 1 << 20, 4 << 20][rng.below(4) as usize];
        let opts = RegionOptions::default()
            .granule(granule)
            .commit_ahead(ahead)
            .populate(rng.below(4) == 0)
            .speculative(rng.below(8) != 0);
        let r =
            Region::reserve(len, opts).unwrap_or_else(|e| panic!("reserve({len}, {opts:?}): {e}"));
        FIG.regions_made.fetch_add(1, Relaxed);
        Soaked { r, content: None }
    }

    /// Checks `range` against what the region should hold there.
    fn check(&self, range: std::ops::Range<usize>, what: &str) {
        let what = format!(
            "{what} (region {:p}, {} bytes, granule {})",
            self.r.as_ptr(),
            self.r.len(),
            self.r.granule()
        );
        let n = range.len();
        match self.content {
            // SAFETY: the region is ours and no writer is running.
            Some(seed) => unsafe {
                Pattern::new(seed, usize::MAX).check(self.r.as_ptr(), range, &what)
            },
            // SAFETY: as above.
            None => unsafe { check_zero(self.r.as_ptr(), range, &what) },
        }
        verified(n);
    }

    fn destroy(self) {
        self.check(0..self.r.len(), "before destroy");
        drop(self.r);
    }
}

/// What the churner did to the written region's tail meanwhile.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tail {
    Kept,
    Zeroed,
}

/// Creates, writes, changes and destroys regions, and switches the fault
/// mode; see the module docs.
fn churner(stop: &AtomicBool) {
    let mut rng = Rng(0xC4_0123_4567);
    let mut pool: Vec<Soaked> = Vec::new();
    let mut modes = Switcher::new();
    // At least one switch each way even in a very short run.
    while !stop.load(Relaxed) || FIG.mode_switches.load(Relaxed) < 2 {
        // Between 3 and 8 regions.
        while pool.len() < 3 || (pool.len() < 8 && rng.below(4) == 0) {
            pool.push(Soaked::make(&mut rng));
        }
        if rng.below(5) == 0 {
            pool.swap_remove(rng.below(pool.len() as u64) as usize)
                .destroy();
        }
        let target = pool.swap_remove(rng.below(pool.len() as u64) as usize);
        let target = churn_round(target, &mut pool, &mut rng, &mut modes);
        pool.push(target);
        FIG.region_rounds.fetch_add(1, Relaxed);
    }
    for s in pool {
        s.destroy();
    }
    modes.account();
}

/// Switches the fault mode every `MODE_SWITCH_EVERY` and keeps the counts
/// of each period, so the end can tell that each path served faults while
/// its mode was set (not only through the fallbacks).
struct Switcher {
    mode: Mode,
    since: Instant,
    at_switch: spf::Stats,
}

impl Switcher {
    fn new() -> Switcher {
        Switcher {
            mode: spf::mode(),
            since: Instant::now(),
            at_switch: spf::stats(),
        }
    }

    /// Adds the period since the last switch to its mode's figures.
    fn account(&mut self) {
        let now = spf::stats();
        let d = now.since(&self.at_switch);
        match self.mode {
            Mode::Speculative => {
                FIG.spf_while_speculative.fetch_add(d.spf, Relaxed);
                FIG.classic_while_speculative.fetch_add(d.classic, Relaxed);
            }
            Mode::Classic => {
                FIG.spf_while_classic.fetch_add(d.spf, Relaxed);
                FIG.classic_while_classic.fetch_add(d.classic, Relaxed);
            }
        }
        self.at_switch = now;
    }

    fn maybe_switch(&mut self) {
        if self.since.elapsed() < MODE_SWITCH_EVERY {
            return;
        }
        self.account();
        self.mode = match self.mode {
            Mode::Speculative => Mode::Classic,
            Mode::Classic => Mode::Speculative,
        };
        spf::set_mode(self.mode);
        self.since = Instant::now();
        FIG.mode_switches.fetch_add(1, Relaxed);
    }
}

/// One round: `REGION_WRITERS` threads write the front half of `t` with a
/// new seed while this thread changes its tail and another region.
fn churn_round(
    mut t: Soaked,
    pool: &mut Vec<Soaked>,
    rng: &mut Rng,
    modes: &mut Switcher,
) -> Soaked {
    let seed = rng.next();
    let len = t.r.len();
    let g = t.r.granule();
    let front = (len / 2 / g).max(1) * g;
    let base = SendPtr(t.r.as_ptr());
    let pages = front / CHUNK;
    let mut tail = Tail::Kept;
    std::thread::scope(|s| {
        let mut writers = Vec::new();
        for w in 0..REGION_WRITERS {
            writers.push(named(s, "region writer", move || {
                let pat = Pattern::new(seed, usize::MAX);
                for p in (w..pages).step_by(REGION_WRITERS) {
                    // SAFETY: page p of the front is this writer's alone;
                    // the churner changes only the tail meanwhile.
                    unsafe { pat.fill(base.get(), p * CHUNK..(p + 1) * CHUNK) };
                }
            }));
        }
        // While they write (and fault): switch the mode if it is time…
        modes.maybe_switch();
        // …change the same region's tail…
        if front < len {
            match rng.below(5) {
                0 => {
                    t.r.decommit(front..len).unwrap();
                    tail = Tail::Zeroed;
                }
                1 => {
                    t.r.shrink(front);
                    // May fail if another region took the space after it.
                    let _ = t.r.grow(len);
                    tail = Tail::Zeroed;
                }
                2 => t.r.commit(front..len).unwrap(),
                _ => {
                    for _ in 0..8 {
                        t.r.protect(Protection::ReadWrite).unwrap();
                        std::thread::yield_now();
                    }
                }
            }
        } else {
            for _ in 0..4 {
                t.r.protect(Protection::ReadWrite).unwrap();
                std::thread::yield_now();
            }
        }
        // …and another region: decommit it all, or replace it.
        if !pool.is_empty() {
            let i = rng.below(pool.len() as u64) as usize;
            match rng.below(3) {
                0 => {
                    let o = &mut pool[i];
                    o.r.decommit(0..o.r.len()).unwrap();
                    o.content = None;
                }
                1 => {
                    pool.swap_remove(i).destroy();
                    pool.push(Soaked::make(rng));
                }
                _ => {}
            }
        }
        for w in writers {
            if let Err(e) = w.join() {
                std::panic::resume_unwind(e);
            }
        }
    });
    let old = t.content;
    t.content = Some(seed);
    t.check(0..front, "region front after the write phase");
    let new_len = t.r.len();
    if new_len > front {
        t.content = if tail == Tail::Zeroed { None } else { old };
        t.check(front..new_len, "region tail after the write phase");
        t.content = Some(seed);
        // SAFETY: our region; the writers are joined.
        unsafe { Pattern::new(seed, usize::MAX).fill(base.get(), front..new_len) };
        t.check(front..new_len, "region tail after filling it");
    }
    t
}

/// Forks every `FORK_EVERY` until told to stop (at least once).
fn forker(stop: &AtomicBool) {
    let region = Region::reserve(4 << 20, RegionOptions::default().granule(16 << 10)).unwrap();
    let half = region.len() / 2;
    let base = SendPtr(region.as_ptr());
    let mut n = 0u64;
    loop {
        let since = Instant::now();
        while since.elapsed() < FORK_EVERY / 2 && !stop.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if stop.load(Relaxed) && n > 0 {
            break;
        }
        n += 1;
        region.decommit(0..region.len()).unwrap();
        let parent_seed = seed_of(n, 0xF0F0);
        let child_seed = seed_of(n, 0x0C0C);
        let parent = Pattern::new(parent_seed, usize::MAX);
        // SAFETY: our region; the first half is committed before the fork.
        unsafe { parent.fill(base.get(), 0..half) };
        // SAFETY: the child runs only allocator and spf code on memory of
        // its own (no lock another thread of ours may hold), then `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // Lets `print_stacks` attach where Yama restricts ptrace to
            // ancestors (an error elsewhere, ignored).
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_PTRACER, libc::PR_SET_PTRACER_ANY) };
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                child_work(base, half, parent_seed, child_seed)
            }))
            .unwrap_or(CHILD_PANICKED);
            // SAFETY: ends the child without running the parent's
            // destructors and atexit handlers.
            unsafe { libc::_exit(code) };
        }
        let status = wait_child(pid);
        assert!(
            libc::WIFEXITED(status),
            "fork child {n} died: status {status:#x}"
        );
        let code = libc::WEXITSTATUS(status);
        assert_eq!(code, 0, "fork child {n}: {}", child_failure(code));
        FIG.forks.fetch_add(1, Relaxed);
        // The child's commits stayed in the child.
        assert!(
            !region.is_committed(half),
            "the child's commit reached the parent"
        );
        // SAFETY: our region.
        unsafe { parent.check(base.get(), 0..half, "parent data after the fork") };
        verified(half);
        let since = Instant::now();
        while since.elapsed() < FORK_EVERY / 2 && !stop.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `waitpid` with a time limit: a hung child is killed and fails the test.
fn wait_child(pid: libc::pid_t) -> i32 {
    let since = Instant::now();
    let mut status = 0;
    loop {
        // SAFETY: our child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid failed");
        if r == pid {
            return status;
        }
        if since.elapsed() > CHILD_LIMIT {
            print_stacks(pid);
            // SAFETY: our child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // SAFETY: as above.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            panic!("fork child {pid} hung for {CHILD_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Prints a hung child's stacks, where `gdb` is installed: a hang is
/// rare and, without them, leaves nothing to go on.
fn print_stacks(pid: libc::pid_t) {
    let out = std::process::Command::new("timeout")
        .args([
            "30",
            "gdb",
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "thread apply all bt",
        ])
        .output();
    match out {
        Ok(o) => eprintln!(
            "stacks of the hung child {pid}:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => eprintln!("no stacks of the hung child {pid} (gdb: {e})"),
    }
}

const CHILD_PANICKED: i32 = 20;

fn child_failure(code: i32) -> &'static str {
    match code {
        10 => "the parent's data in the region was wrong in the child",
        11 => "data written in the child's own faulted granules was wrong",
        12 => "an allocation failed in the child",
        13 => "a block's data was wrong in the child",
        14 => "Region::reserve failed in the child",
        15 => "the child's own region's data was wrong",
        16 => "the child's thread failed",
        CHILD_PANICKED => "the child panicked",
        _ => "unknown exit code",
    }
}

/// The fork child's work: no panics on bad data, an exit code instead.
fn child_work(base: SendPtr, half: usize, parent_seed: u64, child_seed: u64) -> i32 {
    let fill_and_check = |p: *mut u8, range: std::ops::Range<usize>, seed: u64| {
        let pat = Pattern::new(seed, usize::MAX);
        // SAFETY: memory of ours in this process (a region or a block).
        unsafe { pat.fill(p, range.clone()) };
        // SAFETY: as above.
        unsafe { pat.find_mismatch(p, range) }.is_none()
    };
    // SAFETY: the parent's committed half, copied into the child.
    if unsafe { Pattern::new(parent_seed, usize::MAX).find_mismatch(base.get(), 0..half) }.is_some()
    {
        return 10;
    }
    // The second half was decommitted before the fork: these faults commit
    // it in the child only.
    if !fill_and_check(base.get(), half..2 * half, child_seed) {
        return 11;
    }
    for (i, &size) in [24usize, 3000, 100_000, 3 << 20, 9 << 20]
        .iter()
        .enumerate()
    {
        for lazy in [false, true] {
            let layout = Layout::from_size_align(size, 64).unwrap();
            // SAFETY: a valid layout.
            let p = unsafe { allocator(lazy).alloc(layout) };
            if p.is_null() {
                return 12;
            }
            let ok = fill_and_check(p, 0..size, seed_of(i as u64, size));
            // SAFETY: allocated just above with this layout.
            unsafe { allocator(lazy).dealloc(p, layout) };
            if !ok {
                return 13;
            }
        }
    }
    let opts = RegionOptions::default()
        .granule(4 << 10)
        .commit_ahead(64 << 10);
    let Ok(r) = Region::reserve(1 << 20, opts) else {
        return 14;
    };
    if !fill_and_check(r.as_ptr(), 0..r.len(), child_seed ^ 1) {
        return 15;
    }
    drop(r);
    let t = std::thread::spawn(|| {
        let v: Vec<Vec<u8>> = (0..200).map(|i| vec![i as u8; i * 97 + 1]).collect();
        v.iter()
            .enumerate()
            .all(|(i, b)| b.len() == i * 97 + 1 && b.iter().all(|&x| x == i as u8))
    });
    match t.join() {
        Ok(true) => 0,
        _ => 16,
    }
}

/// Aborts the process, printing the figures, if the run outlives its
/// deadline: a hang would otherwise only show as a CI timeout.
fn start_watchdog(deadline: Instant, done: &'static AtomicBool) {
    std::thread::spawn(move || {
        while !done.load(Relaxed) {
            if Instant::now() > deadline {
                eprintln!(
                    "soak: still running {WATCHDOG_GRACE:?} past its end: hung? {}",
                    FIG.line()
                );
                eprintln!("{}", spf::alloc_stats());
                std::process::abort();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

/// A scoped thread with a name, so that a panic says which part failed.
fn named<'scope, 'env>(
    s: &'scope std::thread::Scope<'scope, 'env>,
    name: &str,
    f: impl FnOnce() + Send + 'scope,
) -> std::thread::ScopedJoinHandle<'scope, ()> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn_scoped(s, f)
        .unwrap()
}

/// The process's peak resident memory (`VmHWM`), in bytes.
fn peak_resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib << 10)
}

/// Lets spf-core's epoch collector reclaim what the run left to it. A
/// destroyed region's release is deferred (crossbeam-epoch), and so are the
/// collector's records of exited threads; they sit in the bag of whichever
/// thread deferred them — here the main thread's — until that bag fills,
/// and in the collector's queue until enough pins go by. Until then they
/// count in `allocated` (up to 250 KiB was seen). Destroying a few hundred
/// regions from this thread fills and seals its bag; pinning then frees it.
fn settle_epoch() {
    let opts = RegionOptions::default().granule(4 << 10);
    for _ in 0..256 {
        drop(Region::reserve(4 << 10, opts).unwrap());
    }
    let anchor = Region::reserve(4 << 10, opts).unwrap();
    for _ in 0..20_000 {
        // Each lookup inside a live region pins the collector.
        std::hint::black_box(spf::region_at(std::hint::black_box(anchor.as_ptr())));
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

#[test]
fn soak() {
    static DONE: AtomicBool = AtomicBool::new(false);
    let duration = soak_duration();
    spf::init().unwrap();
    spf::set_mode(Mode::Speculative);
    let start_core = spf::stats();
    let start = spf::alloc_stats();
    let t0 = Instant::now();
    start_watchdog(t0 + duration + WATCHDOG_GRACE, &DONE);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let stop = &stop;
        let mut handles = Vec::new();
        let (txs, rxs): (Vec<Sender<Block>>, Vec<Receiver<Block>>) =
            (0..WORKERS).map(|_| channel()).unzip();
        for (me, rx) in rxs.into_iter().enumerate() {
            let peers: Vec<Sender<Block>> = (0..WORKERS)
                .filter(|&i| i != me)
                .map(|i| txs[i].clone())
                .collect();
            handles.push(named(s, &format!("worker {me}"), move || {
                worker(me, rx, peers, stop)
            }));
        }
        drop(txs);
        let (to_collector, from_spawned) = channel();
        handles.push(named(s, "collector", move || collector(from_spawned)));
        handles.push(named(s, "spawner", move || spawner(stop, to_collector)));
        handles.push(named(s, "churner", move || churner(stop)));
        handles.push(named(s, "forker", move || forker(stop)));
        // Until the time is up, or a thread ends early (it panicked: the
        // scope re-raises the panic once everything is joined).
        while t0.elapsed() < duration && !handles.iter().any(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Relaxed);
        // Joined by hand: a scoped thread counts as finished once its
        // closure returns, before its thread-local destructors have run and
        // freed what they hold; `join` waits for the thread to end.
        for h in handles {
            if let Err(e) = h.join() {
                std::panic::resume_unwind(e);
            }
        }
    });
    let ran = t0.elapsed();
    spf::set_mode(Mode::Speculative);
    let core = spf::stats().since(&start_core);
    let invariants = spf::check_invariants();
    settle_epoch();
    spf::purge();
    let end = spf::alloc_stats();
    DONE.store(true, Relaxed);
    eprintln!(
        "soak: {:.1} s: {}; faults {} (spf {}, classic {}, fatal {}; spf_vma_changed {}, \
         spf_pte_lock {}, spf_vma_notsup {}, spf_cap {}); allocated {} → {} KiB; \
         resident {:.1} → {:.1} MiB after purge (peak {:.1} MiB)",
        ran.as_secs_f64(),
        FIG.line(),
        core.faults,
        core.spf,
        core.classic,
        core.fatal,
        core.spf_vma_changed,
        core.spf_pte_lock,
        core.spf_vma_notsup,
        core.spf_cap,
        start.allocated >> 10,
        end.allocated >> 10,
        mib(start.resident),
        mib(end.resident),
        mib(peak_resident()),
    );
    eprintln!("at the start:\n{start}\nat the end, after purge:\n{end}");

    assert_eq!(core.fatal, 0, "{core}");
    assert_eq!(core.faults, core.spf + core.classic + core.fatal, "{core}");
    assert!(core.spf > 0, "the speculative path never ran: {core}");
    assert!(core.classic > 0, "the classic path never ran: {core}");
    // Each mode's own path served faults while that mode was set (the
    // classic faults of speculative periods are fallbacks and
    // non-speculative regions; the spf faults of classic periods began
    // before a switch).
    assert!(
        FIG.spf_while_speculative.load(Relaxed) > 0,
        "no speculative fault while the mode was speculative"
    );
    assert!(
        FIG.classic_while_classic.load(Relaxed) > 0,
        "no classic fault while the mode was classic"
    );
    assert!(FIG.forks.load(Relaxed) > 0, "no fork ran");
    invariants.unwrap();
    assert_eq!(
        end.large_blocks, start.large_blocks,
        "large blocks alive after everything was freed"
    );
    assert!(
        end.allocated <= start.allocated + LEAK_SLACK,
        "{} bytes still allocated after everything was freed",
        end.allocated - start.allocated
    );
    assert!(start.resident > 0 && end.resident > 0, "no resident figure");
    let bound = start.resident + end.allocated.saturating_sub(start.allocated) + RESIDENT_SLACK;
    assert!(
        end.resident <= bound,
        "resident {:.1} MiB after purge, bound {:.1} MiB (start {:.1} + live {:.1} + slack {:.1})",
        mib(end.resident),
        mib(bound),
        mib(start.resident),
        mib(end.allocated.saturating_sub(start.allocated)),
        mib(RESIDENT_SLACK),
    );
}
