//! Abandonment and adoption: what happens to a heap's pages when its
//! thread exits, and how other threads take them over.
//!
//! A thread's exit (a `pthread` key destructor) *abandons* its heap: empty
//! pages go to the pool, the others to per-class abandoned lists that any
//! thread allocating that class adopts. After that, the exiting thread's own
//! allocations (other destructors may still allocate) go to a shared
//! fallback heap under a lock (`alloc`).
//!
//! Abandoned pages always hold blocks counted in `used` (live, or freed by
//! a thread that caches them to reuse or buffers them and has not given
//! them back yet, `cache` C1, `remote` B1),
//! are tagged `ABANDONED` in
//! their `thread_free` exactly while they are listed, and are changed only
//! under the abandoned lists' lock (S1, S4 in `segment`; the protocol is
//! at `put_abandoned`).

use super::alloc::take;
use super::Heap;
use crate::lock::SpinLock;
use crate::segment::{self, Block, Page, PageList, Segment};
use crate::size_class::CLASSES;
use core::ptr::null_mut;
use core::sync::atomic::Ordering;

struct AbandonedLists([PageList; CLASSES]);
// SAFETY: the lists are reached only under their lock.
unsafe impl Send for AbandonedLists {}

static ABANDONED: SpinLock<AbandonedLists> =
    SpinLock::new(AbandonedLists([PageList::new(); CLASSES]));

/// A thread is exiting: give its pages to the pool or the abandoned lists.
pub fn abandon(h: &Heap) {
    // Blocks this thread cached or buffered go to their pages first: the
    // heap is recycled with its cache and buffer empty, and its own pages'
    // blocks are back on them before they are abandoned (C4 in `cache`,
    // B2 in `remote`).
    super::cache::release_all(h);
    for class in 0..CLASSES {
        // Detach the class's pages under the lock: from then on no
        // reclaimer can reach them (S5), and they are ours to hand on with
        // no lock held, so segments can be destroyed as they free (R1).
        let mut page = {
            let _locked = h.lock.lock();
            let q = h.queue(class);
            let first = q.get().first;
            q.set(PageList::new());
            first
        };
        while !page.is_null() {
            // SAFETY: our page.
            let p = unsafe { &*page };
            let next = p.next.get();
            h.count_collected(p.collect());
            p.next.set(null_mut());
            p.prev.set(null_mut());
            let doomed = if p.used.load(Ordering::Relaxed) == 0 {
                // SAFETY: our page, detached from the queue above (in no
                // list), empty and its remote frees collected.
                unsafe { segment::page_free(page) }
            } else {
                // SAFETY: our page, detached from the queue above.
                unsafe { put_abandoned(page) }
            };
            if let Some(seg) = doomed {
                // SAFETY: handed to us by `page_free` to destroy, once.
                unsafe { segment::segment_destroy(seg) };
            }
            page = next;
        }
    }
    h.pages.store(0, Ordering::Relaxed);
    h.remote_frees.0.store(0, Ordering::Relaxed);
    h.active.store(false, Ordering::Relaxed);
    h.sweep_requested.store(false, Ordering::Relaxed);
}

/// Gives up a page we own that may still have blocks out: it goes on its
/// abandoned list, or to the pool if it turns out empty.
///
/// The protocol with remote freers (S4): under the abandoned lists' lock,
/// one swap collects the page's remote frees and tags it `ABANDONED`, and
/// the page is listed before the lock is released. A freer's CAS either
/// came before the swap (its block is collected here) or fails on the tag;
/// then it frees under the lock (`free_abandoned`), where tag and listing
/// agree. Abandoned pages always hold blocks counted in `used`: the free
/// (or pushed chain) that empties one gives it back. Returns a segment to destroy with no lock held (R1).
///
/// # Safety
/// `page` is a page of the caller's heap (S1), taken out of its queue (in
/// no list).
#[must_use]
unsafe fn put_abandoned(page: *mut Page) -> Option<*mut Segment> {
    // SAFETY: the caller's contract: the caller owns the page.
    let p = unsafe { &*page };
    // Relaxed: freers read `heap` only as a hint (`dealloc_remote`).
    p.heap.store(null_mut(), Ordering::Relaxed);
    let mut lists = ABANDONED.lock();
    p.collect_and_close();
    if p.used.load(Ordering::Relaxed) == 0 {
        drop(lists);
        // SAFETY: ours, empty, in no list; no freer reads it any more (S4).
        return unsafe { segment::page_free(page) };
    }
    p.abandoned.set(true);
    p.freed_at.set(spf_core::monotonic_ns());
    // SAFETY: the page is in no list.
    unsafe { lists.0[p.class.get() as usize].push_front(page) };
    None
}

/// Abandoned pages a decay tick looks at, at most (each walk of a free
/// list is under the abandoned lists' lock, which remote freers of
/// abandoned pages and adopters wait for).
pub(super) const PURGE_ABANDONED_BUDGET: usize = 64;

/// Gives the kernel back the free memory inside abandoned pages abandoned
/// at least `min_age_ns` ago, at 4 KiB granularity, as an owner's decay
/// does for its own pages (`purge_free_runs`): no owner's decay reaches
/// them, and one may hold a single block for a long time — a block of an
/// exited thread still in use, or one another thread freed and caches to
/// reuse (`cache`) or buffers — while its other 60 KiB stay resident.
/// Looks at `budget` pages at most; each page it looks at goes to the back
/// of its list, so the next call starts with others (and an adopter takes
/// the pages purged last). Returns the runs purged.
pub(super) fn purge_abandoned(budget: usize, min_age_ns: u64) -> usize {
    let now = spf_core::monotonic_ns();
    let mut lists = ABANDONED.lock();
    let (mut looked, mut runs) = (0, 0);
    for list in lists.0.iter_mut() {
        // The pages listed when we came: those moved to the back are not
        // looked at twice.
        let last = list.last;
        let mut page = list.first;
        while !page.is_null() && looked < budget {
            // SAFETY: a listed page, under the lists' lock.
            let p = unsafe { &*page };
            let next = p.next.get();
            if now.saturating_sub(p.freed_at.get()) >= min_age_ns {
                looked += 1;
                // SAFETY: the lists own the page (S1) and we hold their
                // lock: no other code walks its `free` meanwhile.
                runs += unsafe { p.purge_free_runs() };
                if !next.is_null() {
                    // SAFETY: the page is on this list.
                    unsafe {
                        list.remove(page);
                        list.push_back(page);
                    }
                }
            }
            if page == last {
                break;
            }
            page = next;
        }
    }
    runs
}

/// A remote free found its page tagged abandoned: free the block into the
/// page under the abandoned lists' lock, and give the page back if that
/// emptied it. False if the page was adopted meanwhile (it is untagged:
/// push again).
///
/// # Safety
/// `block` is a block of `p` that the caller is freeing, once, still
/// counted in `p.used` (S4).
#[cold]
#[inline(never)]
pub(super) unsafe fn free_abandoned(p: &Page, block: *mut Block) -> bool {
    let page = p as *const Page as *mut Page;
    {
        let mut lists = ABANDONED.lock();
        if !p.abandoned.get() {
            return false;
        }
        // The lists own the page (S1) and we hold their lock: its owner-only
        // fields are ours to change.
        // SAFETY: the caller's contract: the block is ours to give back.
        unsafe { (*block).next = p.free.get() };
        p.free.set(block);
        let used = p.used.load(Ordering::Relaxed) - 1;
        p.used.store(used, Ordering::Relaxed);
        if used != 0 {
            return true;
        }
        p.abandoned.set(false);
        // SAFETY: the page is on this list (its flag says so, under the lock).
        unsafe { lists.0[p.class.get() as usize].remove(page) };
    }
    // SAFETY: the page was the abandoned lists' (S1), and is now ours:
    // taken off its list, empty, its last block freed by us.
    if let Some(seg) = unsafe { segment::page_free(page) } {
        // SAFETY: handed to us by `page_free` to destroy, once. No lock
        // held (R1).
        unsafe { segment::segment_destroy(seg) };
    }
    true
}

/// Pages of an abandoned list `adopt` looks at for one with room.
const ADOPT_SCAN: usize = 8;

/// Adopts an abandoned page of `class` (it holds live blocks) that has
/// room for a block, among the first `ADOPT_SCAN` of its list: a page with
/// every block out cannot serve the allocation, and taking it would only
/// move it to our queue (a medium page of one block is always full while
/// abandoned: its last free gives it back).
pub(super) fn adopt(h: &Heap, class: usize) -> Option<*mut Page> {
    let page = {
        let mut lists = ABANDONED.lock();
        let list = &mut lists.0[class];
        let mut p = list.first;
        let mut looked = 0;
        // SAFETY: listed pages, under the lists' lock, which guards an
        // abandoned page's `used` (`free_abandoned`) and `next`.
        while !p.is_null() && unsafe { (*p).used.load(Ordering::Relaxed) >= (*p).reserved.get() } {
            looked += 1;
            if looked == ADOPT_SCAN {
                return None;
            }
            // SAFETY: as above.
            p = unsafe { (*p).next.get() };
        }
        if p.is_null() {
            return None;
        }
        // SAFETY: p is in the abandoned list, whose lock we hold.
        unsafe {
            list.remove(p);
            (*p).abandoned.set(false);
            debug_assert!(
                (*p).used.load(Ordering::Relaxed) > 0,
                "an empty abandoned page"
            );
            (*p).reopen();
        }
        p
    };
    // SAFETY: taken off its abandoned list above: ours, in no list.
    unsafe { take(h, page) };
    Some(page)
}

/// Calls `f` on every abandoned page, under the lists' lock; `f` must not
/// allocate.
///
/// # Safety
/// For `residency` only.
pub(crate) unsafe fn for_each_abandoned_page(f: &mut dyn FnMut(*mut Page)) {
    let lists = ABANDONED.lock();
    for list in &lists.0 {
        let mut p = list.first;
        while !p.is_null() {
            f(p);
            // SAFETY: a listed page, under the lists' lock.
            p = unsafe { (*p).next.get() };
        }
    }
}

pub fn fork_lock_abandoned() {
    ABANDONED.lock_forever();
}

/// # Safety
/// After `fork_lock_abandoned`.
pub unsafe fn fork_unlock_abandoned() {
    // SAFETY: the caller's contract.
    unsafe { ABANDONED.unlock_forgotten() };
}
