//! Foreign blocks: small blocks of other threads' pages that this thread
//! freed and keeps, per class, to serve its own next allocations of that
//! class, instead of sending them back to their pages' owners.
//!
//! Why: a block freed by a thread that does not own its page can only be
//! reused once its owner collects it, and on a loaded machine the owner is
//! often descheduled meanwhile. Under many-thread churn those blocks were
//! the largest part of the resident memory (more than the live blocks on
//! larson-like at 8 threads on 2 CPUs), and every one of them cost its
//! freer a push and its owner a collection. jemalloc's freeing thread keeps
//! such a block in its thread cache and hands it out again; this module is
//! that idea for remote frees only: a thread's own frees still go to its
//! own pages' `local_free` lists, where the fast path finds them. The
//! fast path hands kept blocks out once the first page of the class has no
//! free block of its own.
//!
//! What it owns: one stack per small class (blocks linked through their
//! first word, with their count and the lowest count since the last trim),
//! and the bytes they hold. Owner-only: part of its thread's [`Heap`].
//!
//! Invariants:
//! - F1: a kept block is still counted in its page's `used` (S2), as a
//!   buffered one is (B1 in `remote`): the page is neither pooled,
//!   reclaimed nor handed over while the block is here, and handing the
//!   block out again changes nothing in its page. Whoever frees it next
//!   frees it as any block of that page (locally if it owns the page).
//! - F2: the stacks hold at most `BUDGET` (512 KiB) of blocks and each at
//!   most `CAP` of its class; a free that finds its class's stack
//!   full goes to the remote-free buffer (`remote`). Only blocks of small
//!   pages whose page was not abandoned when freed are kept (as B4).
//! - F3: every block is taken off its stack (the stack written back)
//!   before it is handed to `remote`, whose pushes may re-enter the
//!   allocator on this thread (as B3).
//! - F4: a thread gives its kept blocks back to their pages when it exits
//!   (`abandon`), on its `spf::purge()`, and on its decay ticks the blocks
//!   its allocations did not need since the last one (each stack's low
//!   water mark, as jemalloc's cache trims). A thread that stops
//!   allocating keeps what it holds (at most 512 KiB, plus the remote-free
//!   buffer's 64 KiB) until one of those.
//!
//! After `fork()`, the child's copies of the other threads' stacks are
//! never given back (those threads do not exist there): up to 512 KiB of
//! blocks per such thread stay counted, as with the remote-free buffer.

use super::{remote, Heap};
use crate::misuse;
use crate::segment::{self, Block, Page};
use crate::size_class::{block_size, SMALL_CLASSES};
use core::cell::Cell;
use core::ptr::null_mut;

/// Bytes the stacks may hold in all (F2). Measured on larson-like at 8
/// threads (sizes to 4 KiB): 256 KiB filled with the large classes and left
/// peak RSS 1.05–1.10× jemalloc's, 512 KiB 0.94× (with 32 KiB a class;
/// 64 KiB a class with 512 KiB in all kept more of the large classes and
/// less of the small ones: 0.84× there, 1.00× on lock-free larson).
pub const BUDGET: usize = 512 << 10;

/// The most blocks of each class a stack keeps: 64, or fewer so that one
/// class holds at most 32 KiB (at least 2). A table: the free path does
/// not divide.
static CAP: [u32; SMALL_CLASSES] = {
    let mut t = [0u32; SMALL_CLASSES];
    let mut c = 0;
    while c < SMALL_CLASSES {
        let n = (32 << 10) / crate::size_class::compute_block_size(c);
        t[c] = if n < 2 {
            2
        } else if n > 64 {
            64
        } else {
            n as u32
        };
        c += 1;
    }
    t
};

/// One class's kept blocks.
#[derive(Clone, Copy)]
struct Stack {
    head: *mut Block,
    n: u32,
    /// The lowest `n` since the last trim: that many blocks were not
    /// needed in between.
    low: u32,
}

impl Stack {
    const EMPTY: Stack = Stack {
        head: null_mut(),
        n: 0,
        low: 0,
    };
}

/// A thread's foreign blocks (see the module docs). All zero bytes is
/// empty (heaps start as zeroed memory).
#[repr(C)]
pub struct ForeignBlocks {
    stacks: [Cell<Stack>; SMALL_CLASSES],
    bytes: Cell<usize>,
}

impl ForeignBlocks {
    pub(super) const fn new() -> ForeignBlocks {
        ForeignBlocks {
            stacks: [const { Cell::new(Stack::EMPTY) }; SMALL_CLASSES],
            bytes: Cell::new(0),
        }
    }
}

/// Keeps `block` (a block of a small page of another thread, of class
/// `class` and `size` bytes, being freed) for this thread's allocations;
/// false if its stack or the budget is full (F2).
///
/// # Safety
/// `h` is this thread's live heap; `block` is a block of a small page this
/// thread does not own, being freed once, still counted in its page's
/// `used`; `class < SMALL_CLASSES` and `size` its block size.
#[inline]
pub(super) unsafe fn keep(h: &Heap, block: *mut Block, class: usize, size: usize) -> bool {
    let f = &h.foreign;
    // SAFETY: the caller's contract on `class`.
    let slot = unsafe { f.stacks.get_unchecked(class) };
    let mut s = slot.get();
    let bytes = f.bytes.get() + size;
    // SAFETY: as above.
    if s.n >= unsafe { *CAP.get_unchecked(class) } || bytes > BUDGET {
        return false;
    }
    // SAFETY: the caller's contract: the block is being freed, ours to link.
    unsafe { (*block).next = s.head };
    s.head = block;
    s.n += 1;
    slot.set(s);
    f.bytes.set(bytes);
    h.count_kept();
    true
}

/// A kept block of `class`, handed out again, or null.
///
/// # Safety
/// `h` is this thread's heap (or the fallback heap under its lock).
#[inline]
pub(super) unsafe fn take(h: &Heap, class: usize) -> *mut u8 {
    if class >= SMALL_CLASSES {
        return null_mut();
    }
    let b = pop(&h.foreign, class);
    if b.is_null() {
        return null_mut();
    }
    // SAFETY: F1: the block's page lives while the block is counted.
    misuse::on_alloc(unsafe { &*segment::page_of(b as *mut u8) }, b as *const u8);
    h.add_allocated(block_size(class) as i64);
    h.count_reused();
    b as *mut u8
}

/// Gives back to their pages the blocks each stack did not need since the
/// last trim (its low water mark; F4), through the remote-free buffer.
pub(super) fn trim(h: &Heap) {
    let f = &h.foreign;
    if f.bytes.get() == 0 {
        return;
    }
    for class in 0..SMALL_CLASSES {
        let s = f.stacks[class].get();
        // SAFETY: `h` is this thread's heap; the caller is its owner.
        unsafe { give_back(h, class, s.low) };
        let slot = &f.stacks[class];
        let mut s = slot.get();
        s.low = s.n;
        slot.set(s);
    }
    remote::flush(h);
}

/// Gives back every kept block (F4: exit, `spf::purge()`), then pushes the
/// remote-free buffer.
pub(super) fn release_all(h: &Heap) {
    let f = &h.foreign;
    if f.bytes.get() != 0 {
        for class in 0..SMALL_CLASSES {
            // SAFETY: as in `trim`.
            unsafe { give_back(h, class, u32::MAX) };
        }
    }
    remote::flush(h);
}

/// Gives back up to `n` blocks of `class`'s stack to their pages, through
/// the remote-free buffer.
///
/// # Safety
/// `h` is this thread's live heap (its owner calls).
unsafe fn give_back(h: &Heap, class: usize, n: u32) {
    let size = block_size(class);
    for _ in 0..n {
        // F3: off the stack before `remote` may re-enter the allocator.
        let b = pop(&h.foreign, class);
        if b.is_null() {
            return;
        }
        // SAFETY: F1: the block's page lives while the block is counted.
        let p: &Page = unsafe { &*segment::page_of(b as *mut u8) };
        // SAFETY: a block of `p` being freed (it was, and is again), once,
        // still counted; `h` is this thread's live heap.
        unsafe { remote::buffer(h, p, b, size) };
    }
}

/// Takes the top block off `class`'s stack (`class < SMALL_CLASSES`), the
/// stack and the byte count written back before it returns (F3), or null
/// if the stack is empty.
fn pop(f: &ForeignBlocks, class: usize) -> *mut Block {
    let slot = &f.stacks[class];
    let mut s = slot.get();
    let b = s.head;
    if b.is_null() {
        return null_mut();
    }
    // SAFETY: a kept block: ours, linked through its first word.
    s.head = unsafe { (*b).next };
    s.n -= 1;
    s.low = s.low.min(s.n);
    slot.set(s);
    f.bytes.set(f.bytes.get() - block_size(class));
    b
}
