//! Allocation: the fast path (a block of the thread cache, else pop the
//! first page's free list), the slow path (collect remote frees, carve new
//! blocks, sweep, adopt an abandoned page or take one from the pool), and
//! the fallback heap of threads whose own heap is gone.
//!
//! Fast path budget: `alloc` is a thread-local load; for a small class, a
//! pop off the class's cache stack (three loads, two stores, the low water
//! mark) and a decrement of the cache tick; else two loads to reach the
//! class queue's first page, a pop from its `free` list and two stores; no
//! atomic RMW, one well-predicted branch per step. When `free` runs dry,
//! the page's `local_free` (the owner's own frees) becomes the new `free`
//! list, inline too. Everything else — collecting frees, carving new
//! blocks, taking a page, the periodic work — is `#[cold]`.
//!
//! The fast path touches only the first page of a class queue, without the
//! heap's lock (S5 in `segment`); every other use of the heap's pages and
//! every change to its queues is under that lock.

use super::free::{sweep, sweep_due, Keep};
use super::reclaim::{hand_over_free_pages, reclaim_tick, release_on_decay};
use super::{abandon::adopt, cache, link, remote, Heap, FALLBACK, FALLBACK_HEAP};
use crate::segment::{self, Page, PageKind};
use crate::size_class::{CLASSES, SMALL_CLASSES};
use crate::{large, misuse, thread};
use core::ptr::null_mut;
use core::sync::atomic::Ordering;

/// Allocates a block of `class`. Null when memory is exhausted.
///
/// # Safety
/// `class < CLASSES` (the fast path indexes without a bounds check).
#[inline]
pub unsafe fn alloc(class: usize) -> *mut u8 {
    debug_assert!(class < CLASSES);
    let heap = thread::heap();
    if thread::is_live(heap) {
        // SAFETY: a live heap belongs to this thread (R2: consistent); the
        // caller's contract on `class`.
        return unsafe { alloc_from(&*heap, class) };
    }
    // SAFETY: the caller's contract.
    unsafe { alloc_without_heap(heap, class) }
}

/// The fast path: a block of the thread cache, else pop the first page's
/// free list (refilled from its own frees when it runs dry), else the slow
/// path.
///
/// # Safety
/// `class < CLASSES`.
#[inline(always)]
unsafe fn alloc_from(h: &Heap, class: usize) -> *mut u8 {
    if class < SMALL_CLASSES {
        // SAFETY: `h` is this thread's heap (or the fallback's, locked);
        // `class` is a small class.
        if let Some(b) = unsafe { cache::take(h, class) } {
            return h.count_cache_hit(b);
        }
    }
    // SAFETY: the caller's contract.
    let page = unsafe { h.queues.get_unchecked(class) }.get().first;
    if !page.is_null() {
        // SAFETY: pages in the heap's queues are the heap's (S1).
        let p = unsafe { &*page };
        if !p.free.get().is_null() {
            return pop(h, p);
        }
        // `free` ran dry: our own frees since the last time refill it.
        if p.take_local_frees() {
            return pop(h, p);
        }
    }
    alloc_slow(h, class)
}

/// Every `cache::TICK`th allocation the thread cache served: counts them,
/// sends what the remote-free buffer holds (B2 in `remote`) and trims one
/// class of the cache (C4 in `cache`); every 16th time (4,096 allocations)
/// the rest of the periodic work too, as a slow path would run it, so
/// that a thread whose allocations all come from its cache still decays.
/// Only every 16th: that work reads the clock four times and takes the
/// page pool's lock, which, every 256 allocations, cost a 16 B alloc+free
/// loop 5–10 % of its time. Returns `b`, the block being handed out: a
/// tail call, so that the fast path keeps nothing across it.
#[cold]
#[inline(never)]
pub(super) fn cache_tick(h: &Heap, b: *mut u8) -> *mut u8 {
    if h.settle_cache_hits() % 16 == 0 {
        mark_active(h);
        periodic(h);
    } else {
        remote::flush(h);
        cache::trim_next(h);
    }
    b
}

/// Counts a slow path: marks the heap active for reclaim ticks, and every 64th runs the periodic
/// work.
#[inline]
fn count_slow_path(h: &Heap) {
    mark_active(h);
    let n = h.slow_paths.get().wrapping_add(1);
    h.slow_paths.set(n);
    if n % 64 == 0 {
        periodic(h);
    }
}

/// Marks the heap active: its owner allocates, so reclaim ticks leave its
/// pages to it.
#[inline]
fn mark_active(h: &Heap) {
    // Relaxed: a hint for reclaim ticks; a load first keeps the line shared.
    if !h.active.load(Ordering::Relaxed) {
        h.active.store(true, Ordering::Relaxed);
    }
}

/// The periodic work of slow paths: remote-free buffer, decay of the
/// heap's own pages and its cache, the process's decay and reclaim ticks.
#[cold]
#[inline(never)]
fn periodic(h: &Heap) {
    // A thread that allocates but no longer frees remotely still sends
    // what it buffered (B2 in `remote`).
    remote::flush(h);
    cache::trim_next(h);
    // The work on the clock.
    release_on_decay(h);
    segment::maybe_decay();
    reclaim_tick(h);
    if !segment::deferring() {
        // May destroy regions, which may allocate (R1): not under the
        // fallback lock.
        large::maybe_decay();
    }
}

/// # Safety
/// `class < CLASSES`.
#[cold]
#[inline(never)]
unsafe fn alloc_without_heap(heap: *mut Heap, class: usize) -> *mut u8 {
    if thread::is_unset(heap) {
        if let Some(h) = thread::heap_init() {
            // SAFETY: just made for this thread.
            return alloc_slow(unsafe { &*h }, class);
        }
    }
    // The thread is exiting (or no heap could be made): use the fallback.
    if segment::deferring() {
        // Re-entered from inside the fallback path (spf-core allocating
        // while it fails to make a segment): the lock is ours already.
        return null_mut();
    }
    let mut fb = FALLBACK.lock();
    let h = &FALLBACK_HEAP.0;
    if !fb.0 {
        // SAFETY: the fallback heap, not linked yet (the flag, under its
        // lock, says so).
        unsafe { link(h as *const Heap as *mut Heap) };
        fb.0 = true;
    }
    // Segments freed while we hold the lock are destroyed later (R1):
    // destroying may allocate, and this thread would come back here. The
    // slow path only takes the pool and abandoned locks, nested inside this
    // one in the documented order (see `thread`).
    let _deferring = segment::DeferDestroy::enter();
    // SAFETY: our caller's contract on `class`.
    unsafe { alloc_from(h, class) }
}

/// Finds a page with a free block: collect frees on the first pages of
/// the queue, carve new blocks, sweep when remote frees piled up, adopt an
/// abandoned page, or take a page from the pool — after handing other
/// heaps' pages whose blocks were all freed remotely to the pool, if it
/// holds no resident page of the kind.
#[cold]
#[inline(never)]
fn alloc_slow(h: &Heap, class: usize) -> *mut u8 {
    count_slow_path(h);
    if sweep_due(h) {
        h.sweep_requested.store(false, Ordering::Relaxed);
        sweep(h, Keep::FirstOfClass);
    }
    // The thread cache was looked at on the fast path (a fresh heap keeps
    // nothing there).
    if let Some(b) = alloc_from_queue(h, class) {
        return b;
    }
    // About to adopt or take a page: first send the blocks of other
    // threads' pages waiting in our buffer, which may spare them a fresh
    // page in turn (cached blocks stay: none is of this class, or the fast
    // path would have taken it).
    remote::flush(h);
    loop {
        let page = match adopt(h, class) {
            Some(p) => p,
            None => {
                if !segment::pool_has_dirty(PageKind::of_class(class)) {
                    hand_over_free_pages(h);
                }
                let p = segment::page_alloc(class);
                if p.is_null() {
                    return null_mut();
                }
                // SAFETY: fresh from the pool: ours, in no list.
                unsafe { take(h, p) };
                p
            }
        };
        // SAFETY: the page is now ours and first in its queue: no other
        // thread touches it (S5), we need not hold our lock.
        let p = unsafe { &*page };
        // An adopted page may hold its last owner's local frees.
        p.take_local_frees();
        if p.free.get().is_null() && p.has_holes() {
            p.fill_holes();
        }
        if p.free.get().is_null() && p.capacity.get() < p.reserved.get() {
            p.extend();
        }
        if !p.free.get().is_null() {
            return pop(h, p);
        }
        // An adopted page that is still full stays in our queue; try another.
    }
}

/// A block from the first pages of the class queue (collecting their
/// remote frees, refilling holes left by decay, carving new blocks), or
/// `None`: under the heap's lock.
fn alloc_from_queue(h: &Heap, class: usize) -> Option<*mut u8> {
    let _locked = h.lock.lock();
    let q = h.queue(class);
    let mut page = q.get().first;
    let mut looked = 0;
    while !page.is_null() && looked < 8 {
        // SAFETY: pages in our queue are ours (S1).
        let p = unsafe { &*page };
        let next = p.next.get();
        if !p.take_local_frees() {
            h.count_collected(p.collect());
        }
        // Holes before new blocks: both fault memory in as they are used.
        if p.free.get().is_null() && p.has_holes() {
            p.fill_holes();
        }
        if p.free.get().is_null() && p.capacity.get() < p.reserved.get() {
            p.extend();
        }
        if !p.free.get().is_null() {
            let mut list = q.get();
            if list.first != page {
                // SAFETY: `page` is in this list; move it to the front.
                unsafe {
                    list.remove(page);
                    list.push_front(page);
                }
                q.set(list);
            }
            return Some(pop(h, p));
        }
        // Full: move it to the back, out of the way of the next search.
        if !next.is_null() {
            let mut list = q.get();
            // SAFETY: as above.
            unsafe {
                list.remove(page);
                list.push_back(page);
            }
            q.set(list);
        }
        page = next;
        looked += 1;
    }
    None
}

#[inline(always)]
fn pop(h: &Heap, p: &Page) -> *mut u8 {
    let b = p.free.get();
    debug_assert!(!b.is_null());
    // SAFETY: a free block of our page.
    let next = unsafe { (*b).next };
    p.free.set(next);
    // The next allocation reads `next`'s link: start fetching it now, so a
    // block another thread freed (its line in that thread's cache) arrives
    // while the caller works. A hint; null or not, it never faults.
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads no memory the program sees and never faults.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(next as *const i8)
    };
    misuse::on_alloc(p, b as *const u8);
    // Relaxed: the owner is the only writer (see `Page::used`); only
    // locked code or the first page of a queue gets here (S5).
    p.used
        .store(p.used.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    h.add_allocated(p.size.get() as i64);
    b as *mut u8
}

/// Makes `page` ours and puts it at the front of its class queue.
///
/// # Safety
/// `h` is the caller's heap; the caller owns `page` (fresh from the pool
/// or taken off an abandoned list), which is in no list.
pub(super) unsafe fn take(h: &Heap, page: *mut Page) {
    // SAFETY: the caller's contract: the caller owns the page.
    let p = unsafe { &*page };
    // Release: our later writes to the page follow the ownership change.
    p.heap
        .store(h as *const Heap as *mut Heap, Ordering::Release);
    let _locked = h.lock.lock();
    let q = h.queue(p.class.get() as usize);
    let mut list = q.get();
    // SAFETY: the page is in no list.
    unsafe { list.push_front(page) };
    q.set(list);
    // Relaxed, a load and a store: every writer holds the lock.
    h.pages
        .store(h.pages.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}
