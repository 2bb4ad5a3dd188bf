//! The thread cache: small blocks this thread freed — of its own pages or
//! of other threads' — kept per class to serve its next allocations of
//! that class, as jemalloc's tcache keeps them.
//!
//! Why: a free that must first learn whose page its block is in reads the
//! page descriptor (a line other threads write) and branches on the
//! answer; when a program frees its own and other threads' blocks in no
//! order the processor can learn (lock-free larson), that branch and that
//! line were most of `dealloc`'s time, and the allocation side paid a
//! second such branch. A free into the cache reads nothing of the block's
//! page: the class comes from the layout, the block goes into a slot of
//! its class's stack. Blocks of other threads' pages are reused by the
//! thread that freed them instead of waiting for an owner that is often
//! descheduled (under many-thread churn those were more than the live
//! blocks on larson-like at 8 threads on 2 CPUs). Only when a class's
//! stack is full does a free reach the page (`free`): onto its
//! `local_free` if the page is ours, else into the remote-free buffer.
//!
//! What it owns: one array stack of block pointers per small class (a pop
//! reads no block), with its count and its lowest count since the last
//! trim, and the tick that counts the allocations it served. Owner-only:
//! part of its thread's [`Heap`].
//!
//! Invariants:
//! - C1: a cached block is still counted in its page's `used` (S2), as a
//!   buffered one is (B1 in `remote`), and out of its heap's `allocated`:
//!   its page is neither pooled, reclaimed nor handed over while the block
//!   is here, and handing the block out again changes nothing in its page.
//!   A block given back is freed as any block of its page (locally if this
//!   thread owns the page, else as a remote free), without counting
//!   `allocated` again.
//! - C2: each class's stack holds at most `CAP[class]` blocks (64, or
//!   fewer so that one class holds at most `CLASS_BYTES`), so the stacks
//!   hold at most `BUDGET` (512 KiB) of blocks in all (checked at compile
//!   time: no free counts bytes). A free that finds its stack full goes to
//!   its page. Only small blocks (8 KiB or less) are cached.
//! - C3: every block is taken off its stack (the stack written back)
//!   before it is given back, since a remote push may re-enter the
//!   allocator on this thread (as B3 in `remote`).
//! - C4: the cache gives its blocks back to their pages when the thread
//!   exits (`abandon`), on its `spf::purge()`, and on its decay ticks the
//!   blocks its allocations did not need since the last one (each stack's
//!   low water mark, as jemalloc's cache GC trims). Every `TICK`
//!   allocations served by the cache send the remote-free buffer and trim
//!   one class, the classes in turn, by three quarters of its low water
//!   mark (`trim_next`); every sixteenth time they run the rest of the
//!   slow path's periodic work too (decay ticks among it), so a thread
//!   living on its cache still trims it and decays. A thread that stops
//!   allocating keeps what it holds (at most
//!   512 KiB, plus the remote-free buffer's 64 KiB) until one of those:
//!   its blocks keep their pages from the pool meanwhile, including pages
//!   abandoned by threads that exited (their free 4 KiB runs are still
//!   purged on decay and `spf::purge()`, `abandon`).
//!
//! After `fork()`, the child's copies of the other threads' caches are
//! never given back (those threads do not exist there): up to 512 KiB of
//! blocks per such thread stay counted, as with the remote-free buffer.

use super::{free, remote, Heap};
use crate::misuse;
use crate::segment::{self, Block, Page};
use crate::size_class::{block_size, compute_block_size, SMALL_CLASSES};
use core::cell::Cell;
use core::ptr::null_mut;
use core::sync::atomic::Ordering;

/// Bytes the stacks may hold in all (C2). Measured on larson-like at 8
/// threads (sizes to 4 KiB) when only other threads' blocks were cached:
/// 256 KiB filled with the large classes and left peak RSS 1.05–1.10×
/// jemalloc's, 512 KiB 0.94×.
pub const BUDGET: usize = 512 << 10;

/// Bytes one class's stack may hold: 20 KiB, so that the caps of all
/// classes together stay within `BUDGET` (checked below).
const CLASS_BYTES: usize = 20 << 10;

/// Slots of a stack: the cap of the smallest classes.
const SLOTS: usize = 64;

/// Allocations served by the cache between two cache ticks (C4,
/// `alloc::cache_tick`). The count is a decrement and a branch on the fast
/// path.
pub(super) const TICK: u32 = 256;

/// The cap of a class whose blocks are `size` bytes: `SLOTS`, or fewer
/// so that the class holds at most `CLASS_BYTES` (at least 2).
const fn cap_of(size: usize) -> usize {
    let n = CLASS_BYTES / size;
    if n < 2 {
        2
    } else if n > SLOTS {
        SLOTS
    } else {
        n
    }
}

/// Each class's cap (C2). A table, and a `const`: the free path neither
/// divides nor loads the table's address (a `static` of this crate is
/// reached through the GOT from other crates' inlined code).
const CAP: [usize; SMALL_CLASSES] = {
    let mut t = [0usize; SMALL_CLASSES];
    let mut c = 0;
    while c < SMALL_CLASSES {
        t[c] = cap_of(compute_block_size(c));
        c += 1;
    }
    t
};

// C2: the caps together hold at most `BUDGET`.
const _: () = {
    let (mut total, mut c) = (0, 0);
    while c < SMALL_CLASSES {
        total += CAP[c] * compute_block_size(c);
        c += 1;
    }
    assert!(total <= BUDGET);
};

/// A thread's cache (see the module docs): per class, an array stack of
/// blocks, the last freed on top. The counts sit together apart from the
/// slots, so that a class's count is one load at a fixed offset and its
/// stack one shift away. All zero bytes is empty (heaps start as zeroed
/// memory).
#[repr(C)]
pub struct ThreadCache {
    /// Blocks of each class, in `slots[class][..n[class]]`.
    n: [Cell<usize>; SMALL_CLASSES],
    /// Each class's lowest `n` since the last trim: that many blocks were
    /// not needed in between.
    low: [Cell<usize>; SMALL_CLASSES],
    slots: [[Cell<*mut Block>; SLOTS]; SMALL_CLASSES],
    /// The class `trim_next` trims next.
    next_trim: Cell<usize>,
}

impl ThreadCache {
    pub(super) const fn new() -> ThreadCache {
        ThreadCache {
            n: [const { Cell::new(0) }; SMALL_CLASSES],
            low: [const { Cell::new(0) }; SMALL_CLASSES],
            slots: [const { [const { Cell::new(null_mut()) }; SLOTS] }; SMALL_CLASSES],
            next_trim: Cell::new(0),
        }
    }
}

/// Keeps `block` (a small block of `class`, being freed) for this
/// thread's allocations; false if its class's stack is full (C2). Does not
/// count `allocated`.
///
/// # Safety
/// `h` is this thread's live heap; `block` is a block of a small page,
/// being freed once, still counted in its page's `used`;
/// `class < SMALL_CLASSES` is its class.
#[inline(always)]
pub(super) unsafe fn keep(h: &Heap, block: *mut Block, class: usize) -> bool {
    let c = &h.cache;
    // SAFETY: the caller's contract on `class`.
    let n = unsafe { c.n.get_unchecked(class) };
    let k = n.get();
    if k >= CAP[class] {
        return false;
    }
    // SAFETY: `class` as above; k < CAP <= SLOTS.
    unsafe { c.slots.get_unchecked(class).get_unchecked(k) }.set(block);
    n.set(k + 1);
    true
}

/// A cached block of `class`, or `None`. Counts `allocated` for it; the
/// caller counts the hit (`Heap::count_cache_hit`).
///
/// # Safety
/// `h` is this thread's heap (or the fallback heap under its lock);
/// `class < SMALL_CLASSES`.
#[inline(always)]
pub(super) unsafe fn take(h: &Heap, class: usize) -> Option<*mut u8> {
    // SAFETY: the caller's contract.
    let b = unsafe { pop(&h.cache, class) }?;
    // SAFETY: C1: the block's page lives while the block is counted.
    misuse::on_alloc(unsafe { &*segment::page_of(b as *mut u8) }, b as *const u8);
    h.add_allocated(block_size(class) as i64);
    Some(b as *mut u8)
}

/// Gives back to their pages the blocks each stack did not need since the
/// last trim (its low water mark; C4), then pushes the remote-free buffer.
pub(super) fn trim(h: &Heap) {
    for class in 0..SMALL_CLASSES {
        let low = h.cache.low[class].get();
        // SAFETY: `h` is this thread's heap (its owner calls);
        // `class < SMALL_CLASSES`.
        unsafe { give_back(h, class, low) };
        h.cache.low[class].set(h.cache.n[class].get());
    }
    remote::flush(h);
}

/// Gives back three quarters of the blocks one class's stack did not need
/// since its last trim (its low water mark), the classes in turn, as
/// jemalloc's cache GC does on its allocation events (C4): run from the
/// periodic work, every 256 cache hits or 64 slow paths, so that a class
/// the thread stopped using drains in a few rounds rather than on the
/// next decay tick. The remote-free buffer flushes itself when full.
pub(super) fn trim_next(h: &Heap) {
    let c = &h.cache;
    let class = c.next_trim.get();
    c.next_trim.set((class + 1) % SMALL_CLASSES);
    let low = c.low[class].get();
    // SAFETY: `h` is this thread's heap (its owner calls);
    // `class < SMALL_CLASSES`.
    unsafe { give_back(h, class, low - low / 4) };
    c.low[class].set(c.n[class].get());
}

/// Gives back every cached block (C4: exit, `spf::purge()`), then pushes
/// the remote-free buffer.
pub(super) fn release_all(h: &Heap) {
    h.settle_cache_hits();
    for class in 0..SMALL_CLASSES {
        // SAFETY: as in `trim`.
        unsafe { give_back(h, class, usize::MAX) };
    }
    remote::flush(h);
}

/// Gives back up to `n` blocks of `class`'s stack to their pages: a local
/// free for a page of ours, else a remote free (buffered, or pushed at
/// once if the page is abandoned), neither counting `allocated` (C1).
///
/// # Safety
/// `h` is this thread's live heap (its owner calls); `class <
/// SMALL_CLASSES`.
unsafe fn give_back(h: &Heap, class: usize, n: usize) {
    let mut given = 0u64;
    for _ in 0..n {
        // C3: off the stack before a push may re-enter the allocator.
        // SAFETY: the caller's contract on `class`.
        let Some(b) = (unsafe { pop(&h.cache, class) }) else {
            break;
        };
        given += 1;
        // SAFETY: C1: the block's page lives while the block is counted.
        let page = unsafe { segment::page_of(b as *mut u8) };
        // SAFETY: as above.
        let p: &Page = unsafe { &*page };
        if core::ptr::eq(p.heap.load(Ordering::Relaxed), h) {
            // SAFETY: our page; the block is freed once, counted in `used`.
            unsafe { free::free_local(h, page, b) };
        } else {
            // SAFETY: a block of `p` freed once, counted in `used`; `h` is
            // this thread's live heap.
            unsafe { free::free_remote_counted(h, p, b) };
        }
    }
    if given != 0 {
        h.count_given_back(given);
    }
}

/// Takes the top block off `class`'s stack, the stack written back before
/// it returns (C3), or `None` if the stack is empty (decided by the count
/// alone: a slot below it is never null).
///
/// # Safety
/// `class < SMALL_CLASSES`.
#[inline(always)]
unsafe fn pop(c: &ThreadCache, class: usize) -> Option<*mut Block> {
    // SAFETY: the caller's contract.
    let n = unsafe { c.n.get_unchecked(class) };
    let k = n.get();
    if k == 0 {
        return None;
    }
    let k = k - 1;
    n.set(k);
    // SAFETY: as above.
    let low = unsafe { c.low.get_unchecked(class) };
    if k < low.get() {
        low.set(k);
    }
    // SAFETY: `class` as above; k < CAP <= SLOTS (C2).
    Some(unsafe { c.slots.get_unchecked(class).get_unchecked(k) }.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_keeps_at_least_two_blocks_and_the_smallest_keep_a_full_stack() {
        for (c, &cap) in CAP.iter().enumerate() {
            assert!(cap >= 2, "class {c} keeps {cap}");
            assert!(cap <= SLOTS);
            assert!(cap * block_size(c) <= CLASS_BYTES.max(2 * block_size(c)));
        }
        assert_eq!(CAP[0], SLOTS);
    }

    /// Blocks are only stored and handed back (never read here): any
    /// distinct non-null addresses do.
    fn fake(i: usize) -> *mut Block {
        ((i + 1) * 64) as *mut Block
    }

    #[test]
    fn a_stack_keeps_up_to_its_cap_and_hands_out_the_last_kept_first() {
        let h = Box::new(Heap::empty());
        let class = SMALL_CLASSES - 1;
        for i in 0..CAP[class] {
            // SAFETY: `keep` only stores the pointer; `class` is small.
            assert!(unsafe { keep(&h, fake(i), class) }, "block {i} refused");
        }
        // SAFETY: as above.
        let kept = unsafe { keep(&h, fake(99), class) };
        assert!(!kept, "a full stack kept one more");
        for i in (0..CAP[class]).rev() {
            // SAFETY: `class` is small.
            assert_eq!(unsafe { pop(&h.cache, class) }, Some(fake(i)));
        }
        // SAFETY: as above.
        assert_eq!(unsafe { pop(&h.cache, class) }, None);
        // Another class's stack was never touched.
        // SAFETY: as above.
        assert_eq!(unsafe { pop(&h.cache, 0) }, None);
    }

    #[test]
    fn the_low_water_mark_is_the_fewest_blocks_held_since_it_was_set() {
        let h = Box::new(Heap::empty());
        for i in 0..10 {
            // SAFETY: as in the test above.
            assert!(unsafe { keep(&h, fake(i), 0) });
        }
        h.cache.low[0].set(10); // a trim left 10
        for _ in 0..4 {
            // SAFETY: as above.
            unsafe { pop(&h.cache, 0) }.unwrap();
        }
        for i in 0..6 {
            // SAFETY: as above.
            assert!(unsafe { keep(&h, fake(20 + i), 0) });
        }
        // 12 held, 6 the fewest since: those 6 were not needed.
        assert_eq!((h.cache.n[0].get(), h.cache.low[0].get()), (12, 6));
    }
}
