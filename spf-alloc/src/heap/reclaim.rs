//! Giving memory back: the owner's decay of its own pages (empty pages to
//! the pool, every 4 KiB run of a partly used page that only free blocks
//! cover purged in place as a hole; the blocks its thread cache holds and
//! its allocations did not need, back to their pages, `cache`;
//! the calling thread's part of `spf::purge()`), the purge of free runs of
//! abandoned pages (on decay ticks and by `spf::purge()`), and the reclaim of other
//! heaps' pages whose blocks were all freed by other threads — by any
//! thread's decay tick for heaps whose owner took no slow path since the
//! last tick (an active owner is asked to sweep instead), by
//! `spf::purge()` for all — and the hand-over of such pages, from any
//! heap, to the pool when a thread is about to touch fresh memory.
//!
//! Another heap's pages are reclaimed only under that heap's lock, never
//! the first page of a class queue (S5 in `segment`), one heap's lock at a
//! time, with nothing under it that may allocate (R1).

use super::abandon::{purge_abandoned, PURGE_ABANDONED_BUDGET};
use super::free::{sweep, Keep};
use super::{Heap, ALL_HEAPS};
use crate::segment::{self, Segment};
use crate::size_class::CLASSES;
use crate::{options, thread};
use core::sync::atomic::{AtomicU64, Ordering};

/// Decay for the heap's own pages, run by the owner (other threads cannot
/// touch them, S1) from its slow path once a decay time has passed since
/// the last run: every empty page goes to the pool — the one kept at the
/// front of each class queue too — where the pool's decay purges it, and
/// every 4 KiB run of a partly used page that only free blocks cover is
/// purged in place (`purge_free_runs`); before that, the blocks of its
/// thread cache that its allocations did not need since the last run go
/// back to their pages (`cache::trim`).
/// A thread that stops allocating keeps what it held at its last run.
pub(super) fn release_on_decay(h: &Heap) {
    let now = spf_core::monotonic_ns();
    if now.saturating_sub(h.last_release.get()) < options::decay_ns() {
        return;
    }
    h.last_release.set(now);
    super::cache::trim(h);
    sweep(h, Keep::None);
    purge_free_runs(h);
}

/// The calling thread's part of `spf::purge()`: its empty pages go to the
/// pool (which the caller purges next), and every 4 KiB run of its partly
/// used pages that only free blocks cover is purged.
pub fn release_own() {
    let heap = thread::heap();
    if !thread::is_live(heap) {
        return;
    }
    // SAFETY: this thread's live heap (R2: consistent between calls).
    let h = unsafe { &*heap };
    // Our cached and buffered frees go to their pages, so that the sweep
    // below and the reclaim pass after us can give back pages they empty.
    super::cache::release_all(h);
    while !sweep(h, Keep::None) {}
    purge_free_runs(h);
    h.last_release.set(spf_core::monotonic_ns());
}

/// 4 KiB runs inside pages still in use given back to the kernel by their
/// owner's decay (`purge_free_runs`), for statistics.
pub static PAGE_RUNS_PURGED: AtomicU64 = AtomicU64::new(0);

/// Gives the kernel back the free memory inside the heap's pages that
/// still hold live blocks, at 4 KiB granularity: every 4 KiB run covered
/// only by free blocks becomes a hole (`Page::purge_free_runs`) that the
/// slow path refills before carving new blocks.
fn purge_free_runs(h: &Heap) {
    // Our pages' free lists, walked and changed while no reclaimer resets
    // one of them (S5).
    let _locked = h.lock.lock();
    let mut n = 0;
    for class in 0..CLASSES {
        let mut page = h.queue(class).get().first;
        while !page.is_null() {
            // SAFETY: pages in our queues are ours (S1).
            let p = unsafe { &*page };
            // SAFETY: we own the page and hold our heap's lock.
            n += unsafe { p.purge_free_runs() };
            page = p.next.get();
        }
    }
    if n > 0 {
        PAGE_RUNS_PURGED.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Pages of other threads' heaps reclaimed in place (S5), for statistics.
pub static PAGES_RECLAIMED: AtomicU64 = AtomicU64::new(0);

/// When a reclaim tick last ran (`monotonic_ns`).
static LAST_RECLAIM: AtomicU64 = AtomicU64::new(0);

/// Runs, at most every half decay time in the whole process, a reclaim
/// pass over the other threads' heaps (`reclaim_heap`) and the purge of
/// free runs of up to `PURGE_ABANDONED_BUDGET` pages abandoned a decay
/// time ago or more: called from slow paths, so an idle thread's pages,
/// and exited threads' pages, are given back by threads still working.
pub(super) fn reclaim_tick(own: &Heap) {
    let decay = options::decay_ns();
    let now = spf_core::monotonic_ns();
    let last = LAST_RECLAIM.load(Ordering::Relaxed);
    if now.saturating_sub(last) < decay / 2
        || LAST_RECLAIM
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    reclaim_others(own, Reclaim::Tick);
    let runs = purge_abandoned(PURGE_ABANDONED_BUDGET, decay);
    if runs > 0 {
        PAGE_RUNS_PURGED.fetch_add(runs as u64, Ordering::Relaxed);
    }
}

/// How a reclaim pass treats a heap.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reclaim {
    /// Skip a busy heap's lock; reclaim the pages of heaps whose owner took
    /// no slow path since the last tick, and ask active owners with remote
    /// frees waiting to sweep.
    Tick,
    /// `spf::purge()`: wait for every heap's lock and reclaim whatever is
    /// free, idle or not.
    All,
}

/// A reclaim pass over every heap but `own` (which its owner releases
/// itself). Takes one heap's lock at a time, and nothing under it may
/// allocate (R1).
fn reclaim_others(own: *const Heap, how: Reclaim) {
    let mut h = ALL_HEAPS.load(Ordering::Acquire);
    while !h.is_null() {
        if !core::ptr::eq(h, own) {
            // SAFETY: heaps are never freed; their locks and atomics are
            // shared by design.
            reclaim_heap(unsafe { &*h }, how);
        }
        // SAFETY: as above; `next_all` is written once, before publication.
        h = unsafe { (*h).next_all.load(Ordering::Relaxed) };
    }
}

/// Reclaims, under `h`'s lock, each page of `h` but the first of each
/// class queue whose blocks were all freed by other threads (S5).
fn reclaim_heap(h: &Heap, how: Reclaim) {
    let _locked = match how {
        Reclaim::Tick => match h.lock.try_lock() {
            Some(l) => l,
            None => return,
        },
        Reclaim::All => h.lock.lock(),
    };
    // Relaxed: a hint (what the owner did since the last tick).
    if h.active.swap(false, Ordering::Relaxed) && how == Reclaim::Tick {
        if h.remote_frees.0.load(Ordering::Relaxed) > 0 {
            h.sweep_requested.store(true, Ordering::Relaxed);
        }
        return;
    }
    let mut n = 0;
    for class in 0..CLASSES {
        // The queues change only under the lock we hold.
        let first = h.queue(class).get().first;
        if first.is_null() {
            continue;
        }
        // SAFETY: pages in a heap's queue are its pages (S1), linked under
        // its lock.
        let mut page = unsafe { (*first).next.get() };
        while !page.is_null() {
            // SAFETY: as above.
            let p = unsafe { &*page };
            let next = p.next.get();
            // SAFETY: we hold the owner's lock; not the queue's first page.
            if unsafe { p.reclaim_if_free() } {
                n += 1;
            }
            page = next;
        }
    }
    if n > 0 {
        PAGES_RECLAIMED.fetch_add(n, Ordering::Relaxed);
    }
}

/// Pages of other threads' heaps handed over to the pool (`hand_over_free_pages`).
pub static PAGES_HANDED_OVER: AtomicU64 = AtomicU64::new(0);

/// Pages a hand-over pass looks at, at most, in all heaps together.
const HAND_OVER_BUDGET: usize = 1024;

/// How long hand-over passes are skipped after one that found nothing.
const HAND_OVER_BACKOFF_NS: u64 = 1_000_000;

/// Until when (`monotonic_ns`) hand-over passes are skipped.
static HAND_OVER_QUIET_UNTIL: AtomicU64 = AtomicU64::new(0);

/// Before the slow path touches fresh memory (the pool has no resident
/// page of the kind it needs), gives the pool the pages of other heaps
/// whose blocks were all freed by other threads — active heaps included:
/// an owner that is descheduled, or allocates other classes, would keep
/// them until its own slow path reached them, while this thread carved new
/// memory. The page leaves its heap (S5; never the first or the last page
/// of a queue, so the queue's own words, which the owner reads without the
/// lock, are not written) and goes to the pool resident, where the caller
/// takes it next. Busy heaps are skipped (`try_lock`); one heap's lock at a
/// time, and segments freed are destroyed with no lock held (R1). Returns
/// the pages handed over.
///
/// A pass that finds nothing makes the next ones wait `HAND_OVER_BACKOFF_NS`:
/// in the kvserver load (32 connection threads) every one of ~1,800 passes
/// found nothing, a walk of every heap's queues each time.
pub(super) fn hand_over_free_pages(own: &Heap) -> usize {
    let now = spf_core::monotonic_ns();
    // Relaxed: a hint; a pass more or less is harmless.
    if now < HAND_OVER_QUIET_UNTIL.load(Ordering::Relaxed) {
        return 0;
    }
    let mut budget = HAND_OVER_BUDGET;
    let mut total = 0;
    let mut h = ALL_HEAPS.load(Ordering::Acquire);
    while !h.is_null() && budget > 0 {
        if !core::ptr::eq(h, own) {
            let mut doomed: [*mut Segment; 4] = [core::ptr::null_mut(); 4];
            // SAFETY: heaps are never freed; their locks are shared.
            let (n, d) = hand_over_heap(unsafe { &*h }, &mut budget, &mut doomed);
            total += n;
            for &seg in &doomed[..d] {
                // SAFETY: handed to us by `page_free` to destroy, once; no
                // lock held (R1).
                unsafe { segment::segment_destroy(seg) };
            }
        }
        // SAFETY: as above; `next_all` is written once, before publication.
        h = unsafe { (*h).next_all.load(Ordering::Relaxed) };
    }
    if total > 0 {
        PAGES_HANDED_OVER.fetch_add(total as u64, Ordering::Relaxed);
        // The decay sweep the pages' `page_free` left, with no lock held.
        segment::maybe_decay();
    } else {
        HAND_OVER_QUIET_UNTIL.store(now + HAND_OVER_BACKOFF_NS, Ordering::Relaxed);
    }
    total
}

/// One heap's part of `hand_over_free_pages`, under its lock (skipped if
/// busy): returns the pages handed over and the segments to destroy in
/// `doomed`.
fn hand_over_heap(h: &Heap, budget: &mut usize, doomed: &mut [*mut Segment; 4]) -> (usize, usize) {
    let Some(_locked) = h.lock.try_lock() else {
        return (0, 0);
    };
    let (mut n, mut d) = (0, 0);
    for class in 0..CLASSES {
        // The queues change only under the lock we hold.
        let list = h.queue(class).get();
        if list.first.is_null() {
            continue;
        }
        // SAFETY: pages in a heap's queue are its pages (S1), linked under
        // its lock.
        let mut page = unsafe { (*list.first).next.get() };
        while !page.is_null() && page != list.last {
            if *budget == 0 || d == doomed.len() {
                return (n, d);
            }
            *budget -= 1;
            // SAFETY: as above.
            let p = unsafe { &*page };
            let next = p.next.get();
            // SAFETY: we hold the owner's lock; not the queue's first page.
            if unsafe { p.reset_if_free() }.is_some() {
                let mut copy = list;
                // SAFETY: the page is in this queue, strictly between its
                // first and last: only its neighbours' links change, the
                // queue's words stay as they are (so `copy` is dropped).
                unsafe { copy.remove(page) };
                debug_assert!(copy.first == list.first && copy.last == list.last);
                h.pages
                    .store(h.pages.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
                // Without the pool's decay: its purges would run under
                // this heap's lock (done by `hand_over_free_pages` after).
                // SAFETY: ours while we hold the owner's lock: empty, no
                // block live (`reset_if_free`), in no list now.
                if let Some(seg) = unsafe { segment::page_free_without_decay(page) } {
                    doomed[d] = seg;
                    d += 1;
                }
                n += 1;
            }
            page = next;
        }
    }
    (n, d)
}

/// `spf::purge()`'s part for other threads' heaps: every page whose blocks
/// were all freed by other threads, but the first of each class queue;
/// and the free 4 KiB runs of every abandoned page (`purge_abandoned`).
pub fn reclaim_all() {
    reclaim_others(thread::heap(), Reclaim::All);
    let runs = purge_abandoned(usize::MAX, 0);
    if runs > 0 {
        PAGE_RUNS_PURGED.fetch_add(runs as u64, Ordering::Relaxed);
    }
}
