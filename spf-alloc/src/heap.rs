//! Thread heaps: the allocation fast path, local and remote frees, and what
//! happens when a thread exits.
//!
//! Each thread has a [`Heap`] with one queue of pages per size class. The
//! design follows mimalloc's free-list sharding: each page has two free
//! lists — `free` (the owner allocates from it and pushes its own frees on
//! it, so a freed block is reused while it is still in cache) and
//! `thread_free` (other threads' frees, an atomic stack) — so the owner
//! allocates and frees with no atomic operation and no lock, and another
//! thread frees with one CAS. (mimalloc keeps a third, `local_free`, so that
//! the owner's fast path runs dry now and then and collects; here the
//! collection happens when `free` runs dry, and remote frees waiting in a
//! page are bounded by the page's size.)
//!
//! Fast path budget: `alloc` is a thread-local load, two loads to reach the
//! class queue's first page, a pop from its `free` list and two stores; no
//! atomic RMW, one well-predicted branch per step. Everything else —
//! collecting frees, carving new blocks, taking a page — is `#[cold]`.
//!
//! Cross-thread frees push onto the page's `thread_free` with one CAS — the
//! only access to the page after the free began (S4 in `segment`) — and
//! bump the owning heap's `remote_frees`; the owner collects them when its current page runs
//! dry, and sweeps all its pages once the remote frees since the last sweep
//! outnumber 16 per page it owns, so memory freed by consumers returns to a
//! producer's pages with amortised O(1) work.
//!
//! A thread's exit (a `pthread` key destructor) *abandons* its heap: empty
//! pages go to the pool, the others to per-class abandoned lists that any
//! thread allocating that class adopts. After that, the exiting thread's own
//! allocations (other destructors may still allocate) go to a shared
//! fallback heap under a lock.
//!
//! Rules:
//! - R1: no allocator lock is held across a call that may allocate or pin
//!   an epoch (destroying a segment or a large region), since that call may
//!   re-enter the allocator. Such work is returned to the top level.
//! - R2: the heap's own state is consistent at every call out of this
//!   module, so a re-entrant allocation on the same thread finds it whole.

use crate::lock::SpinLock;
use crate::segment::{self, Block, Page, PageList, Segment};
use crate::size_class::{block_size, CLASSES, SMALL_CLASSES};
use crate::{large, misuse, options, thread};
use core::cell::Cell;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// A heap. The fields the owner writes on every allocation (`queues`'
/// pages, `allocated`) and the one other threads write (`remote_frees`) sit
/// on different cache lines: sharing one made every remote free stall the
/// owner's next allocation (a batch handed to another thread to free took
/// 104–134 ns per block with the counter beside `allocated`).
#[repr(C)]
pub struct Heap {
    /// Each class's pages; the first is the one allocated from (owner only).
    queues: [Cell<PageList>; CLASSES],
    /// Bytes of blocks allocated minus freed through this heap (owner
    /// writes with plain load/store; `stats` reads).
    pub allocated: AtomicI64,
    /// Pages in `queues` (owner only).
    pages: Cell<usize>,
    /// Slow paths taken, to run a decay check every so often.
    slow_paths: Cell<u32>,
    /// When the owner last gave its own empty pages back (`release`), in
    /// `monotonic_ns` (owner only).
    last_release: Cell<u64>,
    /// Every heap ever made, for statistics (never unlinked).
    pub next_all: AtomicPtr<Heap>,
    /// The heap pool's free list.
    next_free: Cell<*mut Heap>,
    /// Held by the owner around every change to its queues and every
    /// slow-path use of its pages, and by another thread reclaiming pages
    /// of this heap (S5 in `segment`). Never held across a call that may
    /// allocate (R1), never two heaps' at once.
    lock: SpinLock<()>,
    /// Set by the owner on its slow path, cleared by reclaim ticks: still
    /// clear at the next tick means the owner took no slow path in between
    /// (it is idle, or runs on its fast paths alone).
    active: AtomicBool,
    /// Set by another thread's reclaim tick when the owner is active and
    /// has remote frees waiting: its next slow path sweeps.
    sweep_requested: AtomicBool,
    /// Frees by other threads into this heap's pages since the last sweep:
    /// written by them, read by the owner. On a line of its own (and of its
    /// neighbour, which the processor prefetches in pairs).
    remote_frees: OwnLine<AtomicUsize>,
}

/// A value alone on a 128-byte pair of cache lines.
#[repr(C, align(128))]
struct OwnLine<T>(T);

/// Every heap ever made.
pub static ALL_HEAPS: AtomicPtr<Heap> = AtomicPtr::new(null_mut());

struct AbandonedLists([PageList; CLASSES]);
// SAFETY: the lists are reached only under their lock.
unsafe impl Send for AbandonedLists {}

static ABANDONED: SpinLock<AbandonedLists> =
    SpinLock::new(AbandonedLists([PageList::new(); CLASSES]));

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

fn link(h: *mut Heap) {
    let mut head = ALL_HEAPS.load(Ordering::Relaxed);
    loop {
        // SAFETY: `h` is a heap being published, not yet reachable.
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
        link(mem);
        mem
    }

    const fn empty() -> Heap {
        Heap {
            queues: [const { Cell::new(PageList::new()) }; CLASSES],
            allocated: AtomicI64::new(0),
            pages: Cell::new(0),
            slow_paths: Cell::new(0),
            last_release: Cell::new(0),
            next_all: AtomicPtr::new(null_mut()),
            next_free: Cell::new(null_mut()),
            lock: SpinLock::new(()),
            active: AtomicBool::new(false),
            sweep_requested: AtomicBool::new(false),
            remote_frees: OwnLine(AtomicUsize::new(0)),
        }
    }

    #[inline]
    fn add_allocated(&self, bytes: i64) {
        // Owner-only writer: a load and a store, no RMW.
        let v = self.allocated.load(Ordering::Relaxed);
        self.allocated.store(v + bytes, Ordering::Relaxed);
    }

    fn queue(&self, class: usize) -> &Cell<PageList> {
        &self.queues[class]
    }
}

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

/// The fast path: pop the first page's free list, else the slow path.
///
/// # Safety
/// `class < CLASSES`.
#[inline(always)]
unsafe fn alloc_from(h: &Heap, class: usize) -> *mut u8 {
    // SAFETY: the caller's contract.
    let page = unsafe { h.queues.get_unchecked(class) }.get().first;
    if !page.is_null() {
        // SAFETY: pages in the heap's queues are the heap's (S1).
        let p = unsafe { &*page };
        if !p.free.get().is_null() {
            return pop(h, p);
        }
    }
    alloc_slow(h, class)
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
        link(h as *const Heap as *mut Heap);
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

/// Finds a page with a free block: collect frees on the first pages of the
/// queue, carve new blocks, sweep when remote frees piled up, adopt an
/// abandoned page, or take a page from the pool.
#[cold]
#[inline(never)]
fn alloc_slow(h: &Heap, class: usize) -> *mut u8 {
    // Relaxed: a hint for reclaim ticks; a load first keeps the line shared.
    if !h.active.load(Ordering::Relaxed) {
        h.active.store(true, Ordering::Relaxed);
    }
    if h.remote_frees.0.load(Ordering::Relaxed) > 16 * h.pages.get().max(64)
        || h.sweep_requested.load(Ordering::Relaxed)
    {
        h.sweep_requested.store(false, Ordering::Relaxed);
        sweep(h, Keep::FirstOfClass);
    }
    let n = h.slow_paths.get().wrapping_add(1);
    h.slow_paths.set(n);
    if n % 64 == 0 {
        release_on_decay(h);
        segment::maybe_decay();
        reclaim_tick(h);
        if !segment::deferring() {
            // May destroy regions, which may allocate (R1): not under the
            // fallback lock.
            large::maybe_decay();
        }
    }
    if let Some(b) = alloc_from_queue(h, class) {
        return b;
    }
    loop {
        let page = match adopt(h, class) {
            Some(p) => p,
            None => {
                let p = segment::page_alloc(class);
                if p.is_null() {
                    return null_mut();
                }
                take(h, p);
                p
            }
        };
        // SAFETY: the page is now ours and first in its queue: no other
        // thread touches it (S5), we need not hold our lock.
        let p = unsafe { &*page };
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
/// remote frees, carving new blocks), or `None`: under the heap's lock.
fn alloc_from_queue(h: &Heap, class: usize) -> Option<*mut u8> {
    let _locked = h.lock.lock();
    let q = h.queue(class);
    let mut page = q.get().first;
    let mut looked = 0;
    while !page.is_null() && looked < 8 {
        // SAFETY: pages in our queue are ours (S1).
        let p = unsafe { &*page };
        let next = p.next.get();
        if p.free.get().is_null() {
            p.collect();
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
    p.free.set(unsafe { (*b).next });
    misuse::on_alloc(p, b as *const u8);
    // Relaxed: the owner is the only writer (see `Page::used`); only
    // locked code or the first page of a queue gets here (S5).
    p.used
        .store(p.used.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    h.add_allocated(p.size.get() as i64);
    b as *mut u8
}

/// Makes `page` ours and puts it at the front of its class queue.
fn take(h: &Heap, page: *mut Page) {
    // SAFETY: the caller owns the page (fresh from the pool or adopted).
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
    h.pages.set(h.pages.get() + 1);
}

/// Gives up a page we own that may still have blocks out: it goes on its
/// abandoned list, or to the pool if it turns out empty.
///
/// The protocol with remote freers (S4): under the abandoned lists' lock,
/// one swap collects the page's remote frees and tags it `ABANDONED`, and
/// the page is listed before the lock is released. A freer's CAS either
/// came before the swap (its block is collected here) or fails on the tag;
/// then it frees under the lock (`free_abandoned`), where tag and listing
/// agree. Abandoned pages always hold live blocks: the free that empties
/// one gives it back. Returns a segment to destroy with no lock held (R1).
#[must_use]
fn put_abandoned(page: *mut Page) -> Option<*mut Segment> {
    // SAFETY: the caller owns the page.
    let p = unsafe { &*page };
    // Relaxed: freers read `heap` only as a hint (`dealloc_remote`).
    p.heap.store(null_mut(), Ordering::Relaxed);
    let mut lists = ABANDONED.lock();
    p.collect_and_close();
    if p.used.load(Ordering::Relaxed) == 0 {
        drop(lists);
        return segment::page_free(page);
    }
    p.abandoned.set(true);
    // SAFETY: the page is in no list.
    unsafe { lists.0[p.class.get() as usize].push_front(page) };
    None
}

/// A remote free found its page tagged abandoned: free the block into the
/// page under the abandoned lists' lock, and give the page back if that
/// emptied it. False if the page was adopted meanwhile (it is untagged:
/// push again).
#[cold]
#[inline(never)]
fn free_abandoned(p: &Page, block: *mut Block) -> bool {
    let page = p as *const Page as *mut Page;
    {
        let mut lists = ABANDONED.lock();
        if !p.abandoned.get() {
            return false;
        }
        // The lists own the page (S1) and we hold their lock: its owner-only
        // fields are ours to change.
        // SAFETY: the block is ours to give back.
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
    if let Some(seg) = segment::page_free(page) {
        segment::segment_destroy(seg); // no lock held (R1)
    }
    true
}

/// Adopts an abandoned page of `class` (it holds live blocks).
fn adopt(h: &Heap, class: usize) -> Option<*mut Page> {
    let page = {
        let mut lists = ABANDONED.lock();
        let list = &mut lists.0[class];
        let p = list.first;
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
    take(h, page);
    Some(page)
}

/// Which empty pages a sweep keeps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// The first page of each class queue, empty or not: an alloc/free
    /// loop would otherwise trade it with the pool every time.
    FirstOfClass,
    /// None: decay and `spf::purge()` want every empty page back.
    None,
}

/// Collects remote frees on every page of the heap and returns empty pages
/// to the pool, keeping what `keep` says. False if it stopped early (it
/// frees at most a few segments at a time); the rest waits for the next.
#[cold]
fn sweep(h: &Heap, keep: Keep) -> bool {
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
            p.collect();
            if p.used.load(Ordering::Relaxed) == 0 && (keep == Keep::None || page != q.get().first)
            {
                if let Some(seg) = unqueue_and_free(h, page) {
                    doomed[n] = seg;
                    n += 1;
                    if n == doomed.len() {
                        // Destroying may re-enter this heap (R2): stop
                        // here and leave the rest for the next sweep.
                        break 'classes;
                    }
                }
            }
            page = next;
        }
    }
    drop(locked); // R1: destroying may allocate
    for &seg in &doomed[..n] {
        segment::segment_destroy(seg);
    }
    n < doomed.len()
}

/// Decay for the heap's own pages, run by the owner (other threads cannot
/// touch them, S1) from its slow path once a decay time has passed since
/// the last run: every empty page goes to the pool — the one kept at the
/// front of each class queue too — where the pool's decay purges it, and
/// the free blocks inside partly used medium pages are purged in place.
/// A thread that stops allocating keeps what it held at its last run.
fn release_on_decay(h: &Heap) {
    let now = spf_core::monotonic_ns();
    if now.saturating_sub(h.last_release.get()) < options::decay_ns() {
        return;
    }
    h.last_release.set(now);
    sweep(h, Keep::None);
    purge_medium_free(h);
}

/// The calling thread's part of `spf::purge()`: its empty pages go to the
/// pool (which the caller purges next), and free blocks inside its partly
/// used medium pages are purged.
pub fn release_own() {
    let heap = thread::heap();
    if !thread::is_live(heap) {
        return;
    }
    // SAFETY: this thread's live heap (R2: consistent between calls).
    let h = unsafe { &*heap };
    while !sweep(h, Keep::None) {}
    purge_medium_free(h);
    h.last_release.set(spf_core::monotonic_ns());
}

/// Free parts of a medium block below which a purge is not worth its
/// system call.
const MIN_BLOCK_PURGE: usize = 32 << 10;

/// Purges the free blocks of the heap's partly used medium pages, each but
/// the 4 KiB page that holds its free-list link: freed memory inside a
/// page that still holds live blocks goes back to the kernel at 4 KiB
/// granularity (blocks from 36 KiB up; medium blocks are 10–256 KiB).
fn purge_medium_free(h: &Heap) {
    // Our pages' free lists, walked and purged while no reclaimer resets
    // one of them (S5).
    let _locked = h.lock.lock();
    for class in SMALL_CLASSES..CLASSES {
        let size = block_size(class);
        if size < MIN_BLOCK_PURGE + 4096 {
            continue;
        }
        let mut page = h.queue(class).get().first;
        while !page.is_null() {
            // SAFETY: pages in our queues are ours (S1).
            let p = unsafe { &*page };
            let mut b = p.free.get();
            while !b.is_null() {
                let start = (b as usize + core::mem::size_of::<Block>()).next_multiple_of(4096);
                let end = (b as usize + size) & !4095;
                if end >= start + MIN_BLOCK_PURGE {
                    // SAFETY: whole 4 KiB pages inside a free block of our
                    // page, in its live segment; nothing reads them before
                    // the block is handed out again (its link word lies
                    // before `start`). A failed purge leaves them resident.
                    let _ = unsafe { spf_core::purge_pages(start as *mut u8, end - start) };
                }
                // SAFETY: a free block of our page: its link is valid.
                b = unsafe { (*b).next };
            }
            page = p.next.get();
        }
    }
}

/// Frees a small or medium block; its page says which class.
///
/// # Safety
/// `ptr` is a live small or medium block spf handed out, freed once.
#[inline]
pub unsafe fn dealloc(ptr: *mut u8) {
    misuse::check_in_segment(ptr);
    // SAFETY: the caller's contract (checked above in debug builds).
    let page = unsafe { segment::page_of(ptr) };
    // SAFETY: a live page (it holds our block).
    let p = unsafe { &*page };
    let heap = thread::heap();
    let block = ptr as *mut Block;
    misuse::on_free(p, ptr);
    // A page's heap is null or a live heap, and this thread's pointer is
    // never null (`thread`): equal means ours.
    if p.heap.load(Ordering::Relaxed) == heap {
        // SAFETY: our heap, our page.
        let h = unsafe { &*heap };
        // SAFETY: the block is being freed: we may link it.
        unsafe { (*block).next = p.free.get() };
        p.free.set(block);
        let used = p.used.load(Ordering::Relaxed) - 1;
        // Release pairs with the Acquire load of `Page::reclaim_if_free`:
        // the link above is written before a reclaimer that sees this
        // count resets the page. A plain store on x86.
        p.used.store(used, Ordering::Release);
        h.add_allocated(-(p.size.get() as i64));
        if used == 0 {
            let list = h.queue(p.class.get() as usize).get();
            // The only page of its class stays: an alloc/free loop would
            // otherwise trade it with the pool every time.
            if !(list.first == page && list.last == page) {
                page_empty(h, page);
            }
        }
    } else {
        dealloc_remote(p, block, heap);
    }
}

#[cold]
#[inline(never)]
fn dealloc_remote(p: &Page, block: *mut Block, heap: *mut Heap) {
    // Read now: once pushed, the block may empty the page (S4).
    let size = p.size.get() as i64;
    // Read before the push, while our block keeps the page out of the pool
    // (S4). Relaxed: only a hint of whom to tell.
    let owner = p.heap.load(Ordering::Relaxed);
    loop {
        // The push is our last access to the page (S4).
        if p.push_remote(block) {
            if !owner.is_null() {
                // SAFETY: heaps are never freed, only recycled: the pointer
                // is always a valid Heap, and the counter is only a hint.
                unsafe { (*owner).remote_frees.0.fetch_add(1, Ordering::Relaxed) };
            }
            break;
        }
        if free_abandoned(p, block) {
            break;
        }
    }
    if thread::is_live(heap) {
        // SAFETY: this thread's heap.
        unsafe { (*heap).add_allocated(-size) };
    } else {
        FALLBACK_FREED.fetch_add(size, Ordering::Relaxed);
    }
}

/// Bytes freed by threads with no heap (exiting threads).
pub static FALLBACK_FREED: AtomicI64 = AtomicI64::new(0);

/// A page of ours became empty and is not the only page of its class:
/// give it back to the pool.
#[cold]
fn page_empty(h: &Heap, page: *mut Page) {
    let doomed = {
        let _locked = h.lock.lock();
        unqueue_and_free(h, page)
    };
    if let Some(seg) = doomed {
        segment::segment_destroy(seg); // R1: no lock held here
    }
}

/// Takes an empty page of ours out of its class queue and gives it to the
/// pool; returns a segment to destroy once the heap is consistent (R2).
/// Under the heap's lock.
fn unqueue_and_free(h: &Heap, page: *mut Page) -> Option<*mut Segment> {
    // SAFETY: our page.
    let p = unsafe { &*page };
    let q = h.queue(p.class.get() as usize);
    let mut list = q.get();
    // SAFETY: the page is in this queue.
    unsafe { list.remove(page) };
    q.set(list);
    h.pages.set(h.pages.get() - 1);
    segment::page_free(page)
}

/// A thread is exiting: give its pages to the pool or the abandoned lists.
pub fn abandon(h: &Heap) {
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
            p.collect();
            p.next.set(null_mut());
            p.prev.set(null_mut());
            let doomed = if p.used.load(Ordering::Relaxed) == 0 {
                segment::page_free(page)
            } else {
                put_abandoned(page)
            };
            if let Some(seg) = doomed {
                segment::segment_destroy(seg);
            }
            page = next;
        }
    }
    h.pages.set(0);
    h.remote_frees.0.store(0, Ordering::Relaxed);
    h.active.store(false, Ordering::Relaxed);
    h.sweep_requested.store(false, Ordering::Relaxed);
}

/// Pages of other threads' heaps reclaimed in place (S5), for statistics.
pub static PAGES_RECLAIMED: AtomicU64 = AtomicU64::new(0);

/// When a reclaim tick last ran (`monotonic_ns`).
static LAST_RECLAIM: AtomicU64 = AtomicU64::new(0);

/// Runs, at most every half decay time in the whole process, a reclaim
/// pass over the other threads' heaps (`reclaim_heap`): called from slow
/// paths, so an idle thread's pages are given back by threads that are
/// still working.
fn reclaim_tick(own: &Heap) {
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

/// `spf::purge()`'s part for other threads' heaps: every page whose blocks
/// were all freed by other threads, but the first of each class queue.
pub fn reclaim_all() {
    reclaim_others(thread::heap(), Reclaim::All);
}

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

pub fn fork_lock_abandoned() {
    ABANDONED.lock_forever();
}

/// # Safety
/// After `fork_lock_abandoned`.
pub unsafe fn fork_unlock_abandoned() {
    // SAFETY: the caller's contract.
    unsafe { ABANDONED.unlock_forgotten() };
}

/// # Safety
/// After `fork_lock_fallback`.
pub unsafe fn fork_unlock_fallback() {
    // SAFETY: the caller's contract.
    unsafe { FALLBACK.unlock_forgotten() };
}

pub(crate) fn set_next_free(h: *mut Heap, next: *mut Heap) {
    // SAFETY: the heap pool owns `h` while it is on the free list.
    unsafe { (*h).next_free.set(next) };
}

pub(crate) fn next_free(h: *mut Heap) -> *mut Heap {
    // SAFETY: as above.
    unsafe { (*h).next_free.get() }
}
