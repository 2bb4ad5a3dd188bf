//! Thread heaps: the [`Heap`] type, its invariants, and the statics every
//! part of the heap shares (the list of all heaps, the fallback heap).
//!
//! Each thread has a [`Heap`] with one queue of pages per size class. The
//! design follows mimalloc's free-list sharding: each page has three free
//! lists — `free` (the owner allocates from it), `local_free` (the owner's
//! own frees, which become `free` when it runs dry, so that a block freed
//! is not taken back at once through the same two words) and
//! `thread_free` (other threads' frees, an atomic stack, collected when
//! `free` and `local_free` are both empty) — so the owner allocates and
//! frees with no atomic operation and no lock, and other threads free with
//! one CAS per page for a batch of frees (`remote`). In front of the pages,
//! each thread caches the small blocks it frees — its own or other
//! threads' — per class, to hand out to its own next allocations of the
//! class, as jemalloc's thread cache does (`cache`): such a free reads
//! nothing of the block's page, and under churn, where the owner is often
//! descheduled, a block waiting for it would be memory nobody can use.
//!
//! The work on a heap is split by concern, as mimalloc splits it:
//! - `alloc`: the allocation fast path and slow path (collecting, carving,
//!   taking pages from the pool), and the fallback heap's use;
//! - `free`: local and remote frees, pages that empty, sweeping;
//! - `cache`: the thread cache, the small blocks this thread freed, kept
//!   per class to serve its own next allocations (and given back on decay
//!   ticks, `spf::purge()` and exit);
//! - `remote`: each thread's remote-free buffer, which pushes its frees
//!   into other threads' pages as one chain per page;
//! - `abandon`: thread exit (abandoning pages) and adopting abandoned pages;
//! - `reclaim`: giving memory back — the owner's decay of its own pages,
//!   and the reclaim of other heaps' remotely freed pages.
//!
//! Rules (for every module of the heap):
//! - R1: no allocator lock is held across a call that may allocate or pin
//!   an epoch (destroying a segment or a large region), since that call may
//!   re-enter the allocator. Such work is returned to the top level.
//! - R2: the heap's own state is consistent at every call out of the heap's
//!   modules, so a re-entrant allocation on the same thread finds it whole.

mod abandon;
mod alloc;
mod cache;
mod free;
mod reclaim;
mod remote;

pub use abandon::{abandon, fork_lock_abandoned, fork_unlock_abandoned};
pub use alloc::alloc;
pub use free::{dealloc, dealloc_small, FALLBACK_FREED};
pub use reclaim::{reclaim_all, release_own, PAGES_HANDED_OVER, PAGES_RECLAIMED, PAGE_RUNS_PURGED};

use crate::lock::SpinLock;
use crate::segment::PageList;
use crate::size_class::CLASSES;
use crate::thread;
use core::cell::Cell;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// A heap. The fields the owner writes on every allocation (`queues`'
/// pages, `allocated`) and the one other threads write (`remote_frees`) sit
/// on different cache lines: sharing one made every remote free stall the
/// owner's next allocation (a batch handed to another thread to free took
/// 104–134 ns per block with the counter beside `allocated`).
///
/// The owner is the thread whose `thread::heap()` this is (for the
/// fallback heap: whoever holds its lock). `Cell` fields are the owner's
/// alone; the atomics are read or written by other threads as each says.
#[repr(C)]
pub struct Heap {
    /// Each class's pages (the class queues); the first is the one
    /// allocated from. Changed under `lock`: by the owner, and by another
    /// thread handing over a page that is neither first nor last (only its
    /// neighbours' links change, not these words: S5); read without the
    /// lock by the owner's fast paths (the first page only, and the last
    /// when a local free empties the first), and under it by reclaimers of
    /// other threads (S5).
    queues: [Cell<PageList>; CLASSES],
    /// Bytes of blocks allocated minus freed through this heap: written by
    /// the owner only, with a plain load and store (`add_allocated`: its
    /// allocations, and its frees, local or remote); read by `stats`.
    pub allocated: AtomicI64,
    /// Allocations the thread cache may still serve before the next run
    /// of the periodic work (C4 in `cache`): counts down from `cache::TICK`
    /// on each cache hit (owner only). Beside `allocated`, which every
    /// allocation writes too.
    cache_tick: Cell<u32>,
    /// Remote frees the owner collected off its pages' `thread_free` (the
    /// blocks of the chains it took whole or linked): written by the owner
    /// only, with a plain load and store; read by `stats`.
    pub remote_collected: AtomicU64,
    /// Chains this thread's remote-free buffer pushed (`remote`), and the
    /// blocks in them: written by the owner only, with a plain load and
    /// store; read by `stats`.
    pub remote_batches: AtomicU64,
    pub remote_batched: AtomicU64,
    /// Allocations the thread cache served, counted `cache::TICK` at a
    /// time (the rest is `TICK - cache_tick`, added at exit and purge),
    /// and blocks the cache gave back to their pages: written by the owner
    /// only, with a plain load and store; read by `stats`.
    pub cache_hits: AtomicU64,
    pub cache_given_back: AtomicU64,
    /// Pages in `queues`: written under `lock`, by the owner (`take`,
    /// `unqueue_and_free`, `abandon` after detaching every queue) and by a
    /// thread handing one of its free pages over (`hand_over_free_pages`);
    /// read without the lock by the owner to scale the sweep threshold.
    pages: AtomicUsize,
    /// Slow paths taken (wrapping), counted by the owner: every 64th runs
    /// the decay checks.
    slow_paths: Cell<u32>,
    /// When the owner last gave its own empty pages back
    /// (`release_on_decay`, `release_own`), in `monotonic_ns` (owner only).
    last_release: Cell<u64>,
    /// The next heap on `ALL_HEAPS`: written once by `link`, before the
    /// heap is published (heaps are never unlinked); read by `stats`,
    /// reclaim passes and the fork handlers.
    pub next_all: AtomicPtr<Heap>,
    /// The next heap on the heap pool's free list while this heap is on it
    /// (no thread owns it then): written and read under the heap pool's
    /// lock (`thread`).
    next_free: Cell<*mut Heap>,
    /// Held by the owner around every change to its queues and every
    /// slow-path use of its pages, and by another thread reclaiming pages
    /// of this heap (S5 in `segment`). Never held across a call that may
    /// allocate (R1), never two heaps' at once.
    lock: SpinLock<()>,
    /// Set by the owner on its slow path, cleared by reclaim ticks (under
    /// `lock`) and by `abandon`: still clear at the next tick means the
    /// owner took no slow path in between (it is idle, or runs on its fast
    /// paths alone).
    active: AtomicBool,
    /// Set by another thread's reclaim tick when the owner is active and
    /// has remote frees waiting: its next slow path sweeps (and clears it).
    sweep_requested: AtomicBool,
    /// This thread's frees into other threads' pages, waiting to be pushed
    /// per page (`remote`). Owner-only.
    remote: remote::RemoteBuffer,
    /// Small blocks this thread freed, kept per class for its own next
    /// allocations (`cache`). Owner-only.
    cache: cache::ThreadCache,
    /// Pages of this heap that newly hold remote frees since the last
    /// sweep: incremented by the freer whose push finds a page's
    /// `thread_free` empty (a hint; one RMW per page and collection, not
    /// per free), read and reset to 0 by the owner (`sweep`, `abandon`),
    /// read by reclaim ticks. On a line of its own (and of its neighbour,
    /// which the processor prefetches in pairs).
    remote_frees: OwnLine<AtomicUsize>,
}

/// The calling thread's cache hits not yet counted in its heap's
/// `cache_hits` (fewer than `cache::TICK`), for `stats`.
pub fn own_cache_hits_pending() -> u64 {
    let heap = thread::heap();
    if !thread::is_live(heap) {
        return 0;
    }
    // SAFETY: this thread's live heap; `cache_tick` is ours to read.
    (cache::TICK - unsafe { (*heap).cache_tick.get() }) as u64
}

/// A value alone on a 128-byte pair of cache lines.
#[repr(C, align(128))]
struct OwnLine<T>(T);

/// Every heap ever made.
pub static ALL_HEAPS: AtomicPtr<Heap> = AtomicPtr::new(null_mut());

/// The heap of threads whose own heap is gone (they are exiting): a static,
/// so that using it never needs a heap from the pool (which could make a
/// region and re-enter the allocator under this lock). The flag says
/// whether it is linked into `ALL_HEAPS` yet.
struct Fallback(bool);
static FALLBACK: SpinLock<Fallback> = SpinLock::new(Fallback(false));

struct StaticHeap(Heap);
// SAFETY: the fallback heap's owner-only state is reached only under the
// FALLBACK lock; its atomics are shared as in any heap.
unsafe impl Sync for StaticHeap {}
static FALLBACK_HEAP: StaticHeap = StaticHeap(Heap::empty());

/// Publishes a heap on `ALL_HEAPS`.
///
/// # Safety
/// `h` is a valid heap, not yet on `ALL_HEAPS` (published once).
unsafe fn link(h: *mut Heap) {
    let mut head = ALL_HEAPS.load(Ordering::Relaxed);
    loop {
        // SAFETY: the caller's contract: a heap being published, not yet
        // reachable.
        unsafe { (*h).next_all.store(head, Ordering::Relaxed) };
        match ALL_HEAPS.compare_exchange_weak(head, h, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return,
            Err(seen) => head = seen,
        }
    }
}

impl Heap {
    /// A heap with empty queues, in freshly committed zeroed memory.
    ///
    /// # Safety
    /// `mem` points to writable memory for a `Heap`, suitably aligned.
    pub unsafe fn init(mem: *mut Heap) -> *mut Heap {
        // SAFETY: zeroed memory is a valid Heap (null lists, zero counters);
        // the caller gives us exclusive access.
        unsafe { core::ptr::write_bytes(mem, 0, 1) };
        // SAFETY: as above.
        unsafe { (*mem).cache_tick.set(cache::TICK) };
        // SAFETY: a heap just made in memory the caller gave us alone.
        unsafe { link(mem) };
        mem
    }

    const fn empty() -> Heap {
        Heap {
            queues: [const { Cell::new(PageList::new()) }; CLASSES],
            allocated: AtomicI64::new(0),
            cache_tick: Cell::new(cache::TICK),
            remote_collected: AtomicU64::new(0),
            remote_batches: AtomicU64::new(0),
            remote_batched: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_given_back: AtomicU64::new(0),
            pages: AtomicUsize::new(0),
            slow_paths: Cell::new(0),
            last_release: Cell::new(0),
            next_all: AtomicPtr::new(null_mut()),
            next_free: Cell::new(null_mut()),
            lock: SpinLock::new(()),
            active: AtomicBool::new(false),
            sweep_requested: AtomicBool::new(false),
            remote: remote::RemoteBuffer::new(),
            cache: cache::ThreadCache::new(),
            remote_frees: OwnLine(AtomicUsize::new(0)),
        }
    }

    #[inline]
    fn add_allocated(&self, bytes: i64) {
        // Owner-only writer: a load and a store, no RMW.
        let v = self.allocated.load(Ordering::Relaxed);
        self.allocated.store(v + bytes, Ordering::Relaxed);
    }

    /// Counts `n` remote frees collected (owner only).
    #[inline]
    fn count_collected(&self, n: u32) {
        let v = self.remote_collected.load(Ordering::Relaxed);
        self.remote_collected
            .store(v.wrapping_add(n as u64), Ordering::Relaxed);
    }

    /// Counts one chain of `n` blocks pushed from the remote-free buffer
    /// (owner only).
    #[inline]
    fn count_batch(&self, n: u32) {
        let v = self.remote_batches.load(Ordering::Relaxed);
        self.remote_batches
            .store(v.wrapping_add(1), Ordering::Relaxed);
        let v = self.remote_batched.load(Ordering::Relaxed);
        self.remote_batched
            .store(v.wrapping_add(n as u64), Ordering::Relaxed);
    }

    /// Counts one allocation the thread cache served (owner only), and
    /// returns its block `b`: a decrement and a branch; every
    /// `cache::TICK`th runs the periodic work (C4 in `cache`).
    #[inline(always)]
    fn count_cache_hit(&self, b: *mut u8) -> *mut u8 {
        let t = self.cache_tick.get().wrapping_sub(1);
        self.cache_tick.set(t);
        if t == 0 {
            return alloc::cache_tick(self, b);
        }
        b
    }

    /// Moves the cache hits not yet counted into `cache_hits` and restarts
    /// the tick (owner only). Returns the ticks so far (`cache_hits` over
    /// `cache::TICK`).
    fn settle_cache_hits(&self) -> u64 {
        let n = cache::TICK - self.cache_tick.get();
        self.cache_tick.set(cache::TICK);
        let v = self.cache_hits.load(Ordering::Relaxed);
        let v = v.wrapping_add(n as u64);
        self.cache_hits.store(v, Ordering::Relaxed);
        v / cache::TICK as u64
    }

    /// Counts `n` blocks the cache gave back to their pages (owner only).
    fn count_given_back(&self, n: u64) {
        let v = self.cache_given_back.load(Ordering::Relaxed);
        self.cache_given_back
            .store(v.wrapping_add(n), Ordering::Relaxed);
    }

    fn queue(&self, class: usize) -> &Cell<PageList> {
        &self.queues[class]
    }
}

/// Calls `f` on every page of every heap's class queues, with its place in
/// its queue (0 first, 1 last, 2 between), under that heap's lock; `f`
/// must not allocate.
///
/// # Safety
/// For `residency` only, whose contract the caller keeps.
pub(crate) unsafe fn for_each_queued_page(f: &mut dyn FnMut(*mut crate::segment::Page, u8)) {
    let mut h = ALL_HEAPS.load(Ordering::Acquire);
    while !h.is_null() {
        // SAFETY: heaps are never freed.
        let heap = unsafe { &*h };
        {
            let _locked = heap.lock.lock();
            for class in 0..CLASSES {
                let list = heap.queue(class).get();
                let mut page = list.first;
                while !page.is_null() {
                    let place = if page == list.first {
                        0
                    } else if page == list.last {
                        1
                    } else {
                        2
                    };
                    f(page, place);
                    // SAFETY: a page of the heap's queue, under its lock.
                    page = unsafe { (*page).next.get() };
                }
            }
        }
        h = heap.next_all.load(Ordering::Relaxed);
    }
}

pub(crate) use abandon::for_each_abandoned_page;

/// Takes every heap's lock for `fork()` (after the heap pool's lock, so
/// no heap is made meanwhile): the child must not inherit a reclaim half
/// done.
pub fn fork_lock_heaps() {
    let mut h = ALL_HEAPS.load(Ordering::Acquire);
    while !h.is_null() {
        // SAFETY: heaps are never freed.
        unsafe {
            (*h).lock.lock_forever();
            h = (*h).next_all.load(Ordering::Relaxed);
        }
    }
}

/// # Safety
/// After `fork_lock_heaps`, with no heap made since.
pub unsafe fn fork_unlock_heaps() {
    let mut h = ALL_HEAPS.load(Ordering::Acquire);
    while !h.is_null() {
        // SAFETY: the caller's contract: each was locked by us.
        unsafe {
            (*h).lock.unlock_forgotten();
            h = (*h).next_all.load(Ordering::Relaxed);
        }
    }
}

pub fn fork_lock_fallback() {
    FALLBACK.lock_forever();
}

/// # Safety
/// After `fork_lock_fallback`.
pub unsafe fn fork_unlock_fallback() {
    // SAFETY: the caller's contract.
    unsafe { FALLBACK.unlock_forgotten() };
}

/// Links `h` on the heap pool's free list, before `next`.
///
/// # Safety
/// `h` is a valid heap that no thread uses (the heap pool's: being put on
/// its free list), and the caller holds the heap pool's lock.
pub(crate) unsafe fn set_next_free(h: *mut Heap, next: *mut Heap) {
    // SAFETY: the caller's contract: the heap pool owns `h`.
    unsafe { (*h).next_free.set(next) };
}

/// The heap after `h` on the heap pool's free list.
///
/// # Safety
/// `h` is on the heap pool's free list, and the caller holds its lock.
pub(crate) unsafe fn next_free(h: *mut Heap) -> *mut Heap {
    // SAFETY: the caller's contract: the heap pool owns `h`.
    unsafe { (*h).next_free.get() }
}
