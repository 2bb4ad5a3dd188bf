//! The remote-free buffer: a thread's frees into pages it does not own,
//! gathered per destination page and pushed onto each page's
//! `thread_free` as one chain with one CAS. Small blocks reach it only
//! when the thread's cache has no room for them (`cache`), or when the
//! cache gives blocks back.
//!
//! Why: a remote free that pushes at once costs a CAS on the page
//! descriptor's second line, and every such CAS takes that line away from
//! the other threads that free into the page and from its owner, who reads
//! `heap` there on each of its frees; on lock-free larson these misses
//! were most of the time spf spent in `dealloc` and `dealloc_remote`.
//! snmalloc batches remote frees per destination slab the same way (a
//! small set-associative cache of open free lists, and a byte budget that
//! sends everything once spent); mimalloc does not batch.
//!
//! What it owns: `SLOTS` open chains, one per destination page, each a
//! list of blocks linked through their first word (head, tail, count),
//! found by hashing the page descriptor's address into a set of two
//! slots (a free into a page whose set holds two other pages pushes the
//! longer of their chains first, as snmalloc evicts its longest: the most
//! blocks per CAS, and the shorter chain may still grow; two ways rather
//! than one took lock-free larson from 1.6 to 2.1 blocks per CAS at
//! 2 threads, 1.6 to 1.8 at 8), and a count of the bytes they hold.
//! Owner-only: the buffer is part of its thread's [`Heap`] and only that
//! thread touches it.
//!
//! Invariants:
//! - B1: a buffered block is still counted in its page's `used` (S2), so no
//!   page is given to the pool, reclaimed or handed over (S5) while any of
//!   its blocks waits here, and reading the page when the chain is pushed
//!   is as safe as it was at the free (S4). The push is the last access.
//! - B2: the buffer holds less than `BUDGET` (64 KiB) of blocks (at their
//!   class sizes) between calls: the free that reaches it pushes every
//!   chain. Only blocks of small pages (8 KiB or less, B4) are buffered,
//!   so an idle thread holds back less than 64 KiB of other threads'
//!   blocks here, in at most `SLOTS` (64) small pages of 64 KiB (and what
//!   its thread cache holds, C2 in `cache`). Those pages
//!   cannot go back to the pool meanwhile — neither when their owner
//!   empties them, nor by another thread's reclaim, hand-over or
//!   `spf::purge()` — though their owners' decay still purges the free
//!   runs of them the owners hold (holes). Its own allocation slow path
//!   (every 64th, and whenever it is about to adopt or take a page),
//!   `spf::purge()` on that thread and the thread's exit push everything;
//!   nothing else can, since only the thread touches its buffer.
//! - B3: a slot is emptied before its chain is pushed, so a free that
//!   re-enters the allocator during a push (giving an abandoned page back
//!   may destroy a segment, which may allocate and free) finds the buffer
//!   consistent.
//! - B4: a block of a medium page (over 8 KiB: one buffered block would
//!   keep a 256 KiB page from the pool) and a block of a page found
//!   abandoned when it is freed (no owner's decay reaches it, and its last
//!   free gives it back) are not buffered but pushed at once
//!   (`push_one`, from `dealloc_remote`).
//! - Abandoned destinations: a chain whose page was abandoned after its
//!   blocks were buffered (its `thread_free` holds the tag) is freed block
//!   by block under the abandoned lists' lock, as a single remote free is
//!   (`free_abandoned`).
//!
//! After `fork()`, the child's copies of the other threads' buffers are
//! never pushed (those threads do not exist there): up to 64 KiB of
//! blocks per such thread stay counted, as the rest of their pages do.
//!
//! The buffer never allocates, and blocks wait in no shared structure: a
//! page's owner sees buffered blocks only once they are pushed, and a
//! thread that frees but never allocates again keeps up to `BUDGET` bytes
//! here (and what its thread cache holds, C4 in `cache`) until
//! its exit or its `spf::purge()`.

use super::abandon::free_abandoned;
use super::Heap;
use crate::segment::{Block, Page, Pushed};
use core::cell::Cell;
use core::ptr::null_mut;
use core::sync::atomic::Ordering;

/// Open chains (one destination page each), in sets of two. A power of
/// two.
const SLOTS: usize = 64;

/// Bytes the buffer may hold (by class size) before it pushes every chain:
/// what an idle thread can hold back of other threads' memory.
pub const BUDGET: usize = 64 << 10;

/// One open chain: blocks of `page` linked from `head` to `tail` through
/// their first word; `page` null when the slot is empty.
#[derive(Clone, Copy)]
struct Chain {
    page: *const Page,
    head: *mut Block,
    tail: *mut Block,
    n: u32,
}

impl Chain {
    const EMPTY: Chain = Chain {
        page: core::ptr::null(),
        head: null_mut(),
        tail: null_mut(),
        n: 0,
    };
}

/// A thread's remote-free buffer (see the module docs). All zero bytes is
/// an empty buffer (heaps start as zeroed memory).
#[repr(C)]
pub struct RemoteBuffer {
    slots: [Cell<Chain>; SLOTS],
    /// Bytes the open chains hold (B2).
    bytes: Cell<usize>,
}

impl RemoteBuffer {
    pub(super) const fn new() -> RemoteBuffer {
        RemoteBuffer {
            slots: [const { Cell::new(Chain::EMPTY) }; SLOTS],
            bytes: Cell::new(0),
        }
    }
}

/// The set of a page (its first slot; the second follows): the
/// descriptor's index in the segment (descriptors are 128 bytes apart)
/// mixed with the segment's address (4 MiB apart).
#[inline]
fn set_of(page: *const Page) -> usize {
    let a = page as usize;
    ((a >> 6) ^ (a >> 21)) & (SLOTS - 2)
}

/// Buffers `block`, a block of `p` that this thread frees and does not own
/// the page of; pushes the chain it displaces, or every chain when the
/// budget is spent. `size` is the block's class size.
///
/// # Safety
/// `h` is this thread's live heap; `block` is a block of `p` being freed,
/// once, still counted in `p.used` (S4).
#[inline]
pub(super) unsafe fn buffer(h: &Heap, p: &Page, block: *mut Block, size: usize) {
    let buf = &h.remote;
    let page = p as *const Page;
    let set = set_of(page);
    let (a, b) = (&buf.slots[set], &buf.slots[set + 1]);
    let (ca, cb) = (a.get(), b.get());
    let hit = if ca.page == page {
        Some((a, ca))
    } else if cb.page == page {
        Some((b, cb))
    } else {
        None
    };
    if let Some((slot, mut c)) = hit {
        // SAFETY: the caller's contract: the block is ours to link.
        unsafe { (*block).next = c.head };
        c.head = block;
        c.n += 1;
        slot.set(c);
    } else {
        // An empty way, else the longer chain goes (the most blocks per
        // CAS; the shorter one may still grow).
        let (slot, c) = if ca.page.is_null() || (!cb.page.is_null() && ca.n >= cb.n) {
            (a, ca)
        } else {
            (b, cb)
        };
        // B3: the slot holds the new chain before the old one is pushed.
        // SAFETY: as above.
        unsafe { (*block).next = null_mut() };
        slot.set(Chain {
            page,
            head: block,
            tail: block,
            n: 1,
        });
        if !c.page.is_null() {
            // SAFETY: a chain of this buffer, now out of it (B1).
            unsafe { push(h, c) };
        }
    }
    let bytes = buf.bytes.get() + size;
    buf.bytes.set(bytes);
    if bytes >= BUDGET {
        flush(h);
    }
}

/// Pushes every open chain of `h`'s buffer to its page (B2).
pub(super) fn flush(h: &Heap) {
    let buf = &h.remote;
    if buf.bytes.get() == 0 {
        return;
    }
    buf.bytes.set(0);
    for slot in &buf.slots {
        let c = slot.replace(Chain::EMPTY);
        if !c.page.is_null() {
            // SAFETY: a chain of this buffer, out of it now (B1, B3).
            unsafe { push(h, c) };
        }
    }
}

/// Pushes one chain taken out of `h`'s buffer onto its page.
///
/// # Safety
/// `c` was an open chain of `h`'s buffer (its blocks still counted in the
/// page's `used`, B1) and is in it no more; `h` is this thread's heap.
#[cold]
#[inline(never)]
unsafe fn push(h: &Heap, c: Chain) {
    // SAFETY: B1: our blocks keep the page alive and out of the pool.
    let p = unsafe { &*c.page };
    // Read before the push, while our blocks keep the page out of the pool
    // (S4). Relaxed: only a hint of whom to tell.
    let owner = p.heap.load(Ordering::Relaxed);
    h.count_batch(c.n);
    // SAFETY: the caller's contract: the chain's blocks, linked head to
    // tail, freed once, counted in `used`.
    match unsafe { p.push_remote_chain(c.head, c.tail, c.n) } {
        Pushed::First => {
            if !owner.is_null() {
                // SAFETY: heaps are never freed, only recycled: the pointer
                // is always a valid Heap, and the counter is only a hint.
                unsafe { (*owner).remote_frees.0.fetch_add(1, Ordering::Relaxed) };
            }
        }
        Pushed::More => {}
        Pushed::Abandoned => {
            let mut block = c.head;
            for _ in 0..c.n {
                // SAFETY: a block of the chain, not yet given back: read
                // its link before giving it back.
                let next = unsafe { (*block).next };
                // SAFETY: a block of `p` we free once, still counted.
                unsafe { push_one(p, block) };
                block = next;
            }
        }
    }
}

/// Frees one block of a page we do not own at once: onto its
/// `thread_free`, or under the abandoned lists' lock if it is abandoned.
///
/// # Safety
/// `block` is a block of `p` that the caller is freeing, once, still
/// counted in `p.used` (S4).
pub(super) unsafe fn push_one(p: &Page, block: *mut Block) {
    // Read before the push, while our block keeps the page out of the pool
    // (S4). Relaxed: only a hint of whom to tell.
    let owner = p.heap.load(Ordering::Relaxed);
    loop {
        // The push is our last access to the page (S4).
        // SAFETY: the caller's contract: a block of `p` being freed.
        match unsafe { p.push_remote(block) } {
            Pushed::First => {
                if !owner.is_null() {
                    // SAFETY: as in `push`.
                    unsafe { (*owner).remote_frees.0.fetch_add(1, Ordering::Relaxed) };
                }
                return;
            }
            Pushed::More => return,
            Pushed::Abandoned => {
                // SAFETY: as above; the push failed, so the block is still
                // ours and counted.
                if unsafe { free_abandoned(p, block) } {
                    return;
                }
            }
        }
    }
}
