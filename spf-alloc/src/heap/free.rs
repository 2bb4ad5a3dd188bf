//! Frees: small blocks into the thread cache (`cache`), local frees (onto
//! the page's `local_free` list, no atomics), remote frees (onto its
//! `thread_free`), pages that empty going back to the pool, and sweeping —
//! collecting remote frees on every page of a heap.
//!
//! A small block's free (its class from the layout) goes into the freeing
//! thread's cache, whoever owns its page, without reading the page; what
//! the cache has no room for, medium blocks, and the blocks the cache gives
//! back go to their page: onto its `local_free` if the freeing thread owns
//! it, else into the freeing thread's remote-free buffer (`remote`), which
//! pushes them onto the page's `thread_free` as a chain, with one CAS per
//! page — the last access to the page (S4 in `segment`), after reading the
//! owner from the same line; the push that finds the page without remote
//! frees also bumps the owning heap's `remote_frees`. The owner collects a
//! page's remote frees in O(1) when its `free` and `local_free` lists are
//! both empty (the chain's word holds its length), and sweeps all its
//! pages once more of them newly hold remote frees than it owns pages
//! (`sweep_due`), so memory freed by consumers returns to a producer's
//! pages with amortised O(1) work.

use super::{cache, remote, Heap};
use crate::segment::{self, Block, Page, Segment, ABANDONED};
use crate::size_class::{block_size, CLASSES, SMALL_MAX};
use crate::{misuse, thread};
use core::ptr::null_mut;
use core::sync::atomic::{AtomicI64, Ordering};

/// Frees a small or medium block by its page (which says its class),
/// without the thread cache: the free of a medium block (a small one goes
/// through `dealloc_small`).
///
/// # Safety
/// `ptr` is a live small or medium block spf handed out, freed once.
#[inline]
pub unsafe fn dealloc(ptr: *mut u8) {
    misuse::check_in_segment(ptr);
    // SAFETY: the caller's contract (checked above in debug builds).
    let page = unsafe { segment::page_of(ptr) };
    // SAFETY: a live page (it holds our block).
    misuse::on_free(unsafe { &*page }, ptr);
    // SAFETY: the caller's contract; the ledger saw the free.
    unsafe { free_at(page, ptr as *mut Block, thread::heap()) }
}

/// The page's way of freeing a block: onto its `local_free` if the page
/// is ours, else as a remote free.
///
/// # Safety
/// `block` is a live block of `page` being freed once (the ledger told),
/// still counted in `used`; `heap` is `thread::heap()`.
#[inline]
unsafe fn free_at(page: *mut Page, block: *mut Block, heap: *mut Heap) {
    // SAFETY: a live page (it holds our block).
    let p = unsafe { &*page };
    // A page's heap is null or a live heap, and this thread's pointer is
    // never null (`thread`): equal means ours.
    if p.heap.load(Ordering::Relaxed) == heap {
        // SAFETY: our heap, our page.
        let h = unsafe { &*heap };
        h.add_allocated(-(p.size.get() as i64));
        // SAFETY: the caller's contract.
        unsafe { free_local(h, page, block) };
    } else {
        // SAFETY: the caller's contract: `block` is a block of `p` being
        // freed, still counted in `used`; `heap` is `thread::heap()`.
        unsafe { dealloc_remote(p, block, heap) };
    }
}

/// A local free: `block` onto its page's `local_free`, out of `used`, and
/// the page to the pool if that emptied it (unless it is its class's only
/// page). Does not count `allocated`.
///
/// # Safety
/// `h` is this thread's heap and owns `page`; `block` is a block of it
/// being freed once, still counted in `used`.
#[inline]
pub(super) unsafe fn free_local(h: &Heap, page: *mut Page, block: *mut Block) {
    // SAFETY: the caller's contract.
    let p = unsafe { &*page };
    // Read before the store below: once `used` equals the length of the
    // page's remote chain, another thread may hand the page over (S5) and
    // a third re-`init` it for another class.
    let class = p.class.get();
    // SAFETY: the block is being freed: we may link it.
    unsafe { (*block).next = p.local_free.get() };
    p.local_free.set(block);
    let used = p.used.load(Ordering::Relaxed) - 1;
    // Release pairs with the Acquire load of `Page::reset_if_free`: the
    // link above is written before a reclaimer that sees this count resets
    // the page. A plain store on x86. After it, the page is touched again
    // only if it is now empty (no remote chain can be waiting then, S2, so
    // no reclaimer takes it).
    p.used.store(used, Ordering::Release);
    if used == 0 {
        let list = h.queue(class as usize).get();
        // The only page of its class stays: an alloc/free loop would
        // otherwise trade it with the pool every time.
        if !(list.first == page && list.last == page) {
            // SAFETY: our page (its heap is ours), in its class queue, and
            // empty (`used` is 0).
            unsafe { page_empty(h, page) };
        }
    }
}

/// Frees a small block of `class` (from its layout): into this thread's
/// cache if its class's stack has room, else by its page (`free_at`).
///
/// # Safety
/// As `dealloc`; `class < SMALL_CLASSES` is the block's class.
#[inline(always)]
pub unsafe fn dealloc_small(ptr: *mut u8, class: usize) {
    misuse::check_in_segment(ptr);
    // The ledger of debug builds sees every free (release builds read
    // nothing of the page here).
    #[cfg(debug_assertions)]
    // SAFETY: the caller's contract (checked above).
    misuse::on_free(unsafe { &*segment::page_of(ptr) }, ptr);
    let heap = thread::heap();
    if thread::is_live(heap) {
        // SAFETY: our live heap.
        let h = unsafe { &*heap };
        // SAFETY: a small block of `class` being freed once, counted in
        // its page's `used`.
        if unsafe { cache::keep(h, ptr as *mut Block, class) } {
            h.add_allocated(-(block_size(class) as i64));
            return;
        }
    }
    // SAFETY: the caller's contract; the ledger saw the free (debug).
    unsafe { free_at(segment::page_of(ptr), ptr as *mut Block, heap) }
}

/// Frees a block of a page this thread does not own, counting it out of
/// this thread's `allocated`: see `free_remote_counted`; at once if the
/// thread has no heap (it is exiting).
///
/// # Safety
/// `block` is a block of `p` that the caller is freeing, once, still
/// counted in `p.used` (S4); `heap` is this thread's `thread::heap()`.
#[cold]
#[inline(never)]
unsafe fn dealloc_remote(p: &Page, block: *mut Block, heap: *mut Heap) {
    let mut heap = heap;
    if thread::is_unset(heap) {
        // A thread that frees before it ever allocated (a consumer of
        // another thread's blocks) gets its heap now, as its first
        // allocation would give it one: else each of its frees would be a
        // locked add on `FALLBACK_FREED` (39 % of `dealloc_remote`'s samples
        // on the hand-off benchmark, whose consumer never allocates), and
        // it would have no buffer to batch its frees in.
        heap = thread::heap_init().unwrap_or(heap);
    }
    // Read now, from the line a push writes, not the owner's: the block may
    // be pushed below, after which the page may empty (S4).
    let size = p.remote_size.get();
    if thread::is_live(heap) {
        // SAFETY: this thread's heap.
        let h = unsafe { &*heap };
        h.add_allocated(-(size as i64));
        // SAFETY: the caller's contract; `h` is this thread's live heap.
        unsafe { free_remote_counted(h, p, block) };
    } else {
        // SAFETY: the caller's contract.
        unsafe { remote::push_one(p, block) };
        FALLBACK_FREED.fetch_add(size as i64, Ordering::Relaxed);
    }
}

/// Frees a block of a page this thread does not own, already counted out
/// of `allocated` (a block the cache gives back, C1 in `cache`, or
/// `dealloc_remote`'s): a small block into the remote-free buffer
/// (`remote`), which pushes it onto the page's `thread_free` with others
/// of the same page; a medium block, or one whose page is abandoned, at
/// once (B4 in `remote`).
///
/// # Safety
/// `block` is a block of `p`, a page `h` does not own, being freed once,
/// still counted in `p.used` (S4); `h` is this thread's live heap.
pub(super) unsafe fn free_remote_counted(h: &Heap, p: &Page, block: *mut Block) {
    // Read now, from the line a push writes, not the owner's: the block may
    // be pushed below, after which the page may empty (S4).
    let size = p.remote_size.get() as usize;
    // Relaxed: a hint; a page abandoned after this read still takes a
    // chain (`remote::push` frees it under the lists' lock).
    if size <= SMALL_MAX && p.thread_free.load(Ordering::Relaxed) != ABANDONED {
        // SAFETY: the caller's contract.
        unsafe { remote::buffer(h, p, block, size) };
    } else {
        // SAFETY: the caller's contract.
        unsafe { remote::push_one(p, block) };
    }
}

/// Bytes freed by threads with no heap (exiting threads, or threads that
/// could not get one).
pub static FALLBACK_FREED: AtomicI64 = AtomicI64::new(0);

/// A page of ours became empty and is not the only page of its class: a
/// heap keeps one empty page a class, at the front of its queue, where the
/// next allocation of the class finds it on the fast path; a second goes
/// back to the pool. A medium page holds as few as one block, so without
/// the kept page every free of a class whose blocks fill several pages
/// would go to the pool and every allocation come back through the slow
/// path and the pool's lock (200 KiB blocks, 8 live: 21 → 111 ns a
/// replacement). Decay and `spf::purge()` take the kept page back
/// (`sweep` with `Keep::None`).
///
/// # Safety
/// `h` is this thread's heap, and `page` one of its pages (S1), in its
/// class queue, with `used == 0`.
#[cold]
unsafe fn page_empty(h: &Heap, page: *mut Page) {
    let doomed = {
        let _locked = h.lock.lock();
        // SAFETY: the caller's contract: our page.
        let q = h.queue(unsafe { (*page).class.get() } as usize);
        let mut list = q.get();
        // SAFETY: the queue's pages are ours (S1); the first is not null
        // (`page` is in the queue).
        let first_empty = unsafe { (*list.first).used.load(Ordering::Relaxed) } == 0;
        if list.first == page || !first_empty {
            if list.first != page {
                // SAFETY: `page` is in this queue, which we hold the lock of.
                unsafe {
                    list.remove(page);
                    list.push_front(page);
                }
                q.set(list);
            }
            return;
        }
        // SAFETY: the caller's contract; we hold the heap's lock.
        unsafe { unqueue_and_free(h, page) }
    };
    if let Some(seg) = doomed {
        // SAFETY: `page_free` handed us the segment to destroy. R1: no
        // lock held here.
        unsafe { segment::segment_destroy(seg) };
    }
}

/// Takes an empty page of ours out of its class queue and gives it to the
/// pool; returns a segment to destroy once the heap is consistent (R2).
///
/// # Safety
/// The caller is `h`'s owner and holds its lock; `page` is one of `h`'s
/// pages (S1), in its class queue, with `used == 0`.
unsafe fn unqueue_and_free(h: &Heap, page: *mut Page) -> Option<*mut Segment> {
    // SAFETY: the caller's contract: our page.
    let p = unsafe { &*page };
    let q = h.queue(p.class.get() as usize);
    let mut list = q.get();
    // SAFETY: the page is in this queue.
    unsafe { list.remove(page) };
    q.set(list);
    // Relaxed, a load and a store: every writer holds the lock.
    h.pages
        .store(h.pages.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
    // SAFETY: our empty page (the caller's contract), now in no list.
    unsafe { segment::page_free(page) }
}

/// Which empty pages a sweep keeps.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Keep {
    /// The first page of each class queue, empty or not: an alloc/free
    /// loop would otherwise trade it with the pool every time.
    FirstOfClass,
    /// None: decay and `spf::purge()` want every empty page back.
    None,
}

/// Whether the owner's slow path should sweep: more of its pages newly hold
/// remote frees since the last sweep than it owns pages (at least 32), so
/// that a sweep's walk over every page is paid for by as many pages with
/// frees to collect; or a reclaim tick asked for one.
#[inline]
pub(super) fn sweep_due(h: &Heap) -> bool {
    h.remote_frees.0.load(Ordering::Relaxed) > h.pages.load(Ordering::Relaxed).max(32)
        || h.sweep_requested.load(Ordering::Relaxed)
}

/// Returns the heap's empty pages to the pool (pages whose every block out
/// waits on `thread_free` count as empty), keeping what `keep` says, and
/// collects the remote frees of every page whose `free` and `local_free`
/// lists are empty (of every page, with `Keep::None`). False if it stopped
/// early (it frees at most a few segments at a time); the rest waits for
/// the next.
#[cold]
pub(super) fn sweep(h: &Heap, keep: Keep) -> bool {
    h.remote_frees.0.store(0, Ordering::Relaxed);
    let mut doomed: [*mut Segment; 4] = [null_mut(); 4];
    let mut n = 0;
    let locked = h.lock.lock();
    'classes: for class in 0..CLASSES {
        let q = h.queue(class);
        let mut page = q.get().first;
        while !page.is_null() {
            // SAFETY: our page.
            let p = unsafe { &*page };
            let next = p.next.get();
            let kept = keep == Keep::FirstOfClass && page == q.get().first;
            // Only O(1) work per page on the allocation path's sweeps: an
            // empty page goes to the pool with its remote chain unwalked, a
            // page with no block on `free` or `local_free` takes its chain
            // whole; a page with such blocks keeps its chain until they run
            // out (walking chains here was most of the sweep's time on
            // lock-free larson). Decay and `spf::purge()` (`Keep::None`,
            // rare) collect every chain, so that decay's `purge_free_runs` finds
            // every free block on the `free` lists.
            if !kept && p.take_remote_if_empty() {
                // SAFETY: `sweep` runs on the caller's own heap; we hold
                // its lock; the page is in its queue and empty.
                if let Some(seg) = unsafe { unqueue_and_free(h, page) } {
                    doomed[n] = seg;
                    n += 1;
                    if n == doomed.len() {
                        // Destroying may re-enter this heap (R2): stop
                        // here and leave the rest for the next sweep.
                        break 'classes;
                    }
                }
            } else if !p.has_listed_free() || keep == Keep::None {
                h.count_collected(p.collect());
            }
            page = next;
        }
    }
    drop(locked); // R1: destroying may allocate
    for &seg in &doomed[..n] {
        // SAFETY: each handed to us by `page_free` to destroy, once.
        unsafe { segment::segment_destroy(seg) };
    }
    n < doomed.len()
}
