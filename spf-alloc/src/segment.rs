//! Segments and pages: where small and medium blocks live, the global page
//! pool, and decay.
//!
//! A *segment* is a 4 MiB spf-core region, aligned to 4 MiB and committed
//! when created (the allocator never faults on its own memory). Its first
//! 64 KiB hold the [`Segment`] header with 64 [`Page`] descriptors, one per
//! 64 KiB of the segment — the allocator's metadata never comes from its
//! own blocks. Descriptor `i` describes the memory at `segment + i × 64 KiB`.
//! (The small page's size is one constant, `SMALL_PAGE_SHIFT`: the header's
//! pages, the medium pages' descriptors and the masks below follow from
//! it. 64 KiB is what is measured and tested. With 16 KiB pages, peak RSS
//! on larson-like at 8 threads fell by about a sixth, but the churn
//! workloads ran 27–33 % more instructions: a page's remote-free chain
//! holds at most a quarter as many blocks, so slow paths come four times
//! as often, and each walks longer class queues of full pages.)
//! Two kinds ([`PageKind`]; a segment's pages are all of one kind):
//!
//! - a *small* segment: pages 1–63 are 64 KiB small pages, each serving one
//!   small class (blocks up to 8 KiB);
//! - a *medium* segment: fifteen 256 KiB medium pages, from 256 KiB on
//!   (descriptors 4, 8, …, 60), each serving one medium class (blocks of
//!   10–256 KiB: 25 down to 1 a page). The rest of the first 256 KiB is
//!   never touched, so it costs address space but no memory.
//!
//! Why 256 KiB and not 1 MiB (as before): a thread keeps a page of every
//! medium class it uses, and each page stays as resident as the most
//! blocks it ever held at once, so memory freed in a class stays with that
//! class and that thread until its page empties. A smaller page caps what
//! one class holds in one page and empties more often, and an empty page
//! goes back to the pool, where any class and any thread takes it. On the
//! mixed torture (8 threads × 4 waves), the resident bytes of medium pages
//! at the highest checkpoint of `examples/residency.rs torture` fell from
//! 120–127 MiB (for 27 MiB of live blocks) to 71 MiB (for 25–29), the
//! process's peak from 380 to 339 MiB and its page faults from 85k to 58k
//! (`alloc_bench --child`, 10 cold runs each, medians); 512 KiB pages gave
//! 360 MiB and 70k.
//!
//! Pointer to metadata, in masks and a shift: `segment = ptr & !(4 MiB −
//! 1)`; the descriptor is `segment.pages[((ptr − segment) >> 16) & mask]`,
//! where the header's `index_mask` is 63 in a small segment and 60 (0x3c) in
//! a medium one (`page_of`). The descriptor holds the class and block size,
//! so `dealloc` needs from the `Layout` only whether the block is large.
//!
//! The *pool* (one spin lock, slow path only) holds free small and medium
//! pages. A page handed back keeps its memory ("dirty") for the decay time,
//! then is purged with `MADV_DONTNEED` (it stays committed and reads as
//! zero) — with the lock released: the pages being purged are off the
//! lists meanwhile and counted in their segments as pages in use
//! (`decay_pool`). A segment whose pages are all free goes back to
//! spf-core once they are all purged too, or at once past
//! `KEEP_FREE_SEGMENTS` wholly free segments of its kind — in either case
//! only if the pool holds more than two free segments' worth of that kind
//! (S6).
//!
//! The pool is how memory passes from one thread generation to the next:
//! a thread's exit pools its empty pages, and the threads after it take
//! them. Two rules keep that memory in use rather than faulting in fresh
//! pages beside it (on the mixed torture, 8 threads × 4 waves, they took
//! page faults per repetition from about 141k to 103k, 10 runs each, with
//! the same median peak RSS, 417 and 418 MiB):
//! - a page is taken dirty, most recently freed first, and among the
//!   first `SAME_CLASS_SCAN` dirty pages one that last served the class
//!   asked for is preferred: its resident memory is exactly where the new
//!   owner carves its blocks again, where a page of another class has its
//!   resident bytes at other offsets (a page that served the 128 KiB
//!   class with only its second block touched serves a 20 KiB class from
//!   its start, and faults in there);
//! - a free segment is not returned while its memory is dirty, up to 32
//!   of them a kind (128 MiB). Returning it at once (as before) made the
//!   next generation of threads fault in fresh segments — about 180
//!   medium segments made and destroyed per torture repetition — while
//!   memory freed a moment earlier was discarded. The cap bounds what a
//!   program that frees a great deal and then stops calling the allocator
//!   keeps (decay runs only on its calls); without it the torture took
//!   97k faults, with 16 free segments 119k.
//!
//! Free memory inside a page still in use goes back at 4 KiB granularity:
//! the owner's decay turns every 4 KiB run covered only by free blocks
//! into a *hole* (`Page::holes`, `purge_free_runs`) — its blocks leave the
//! free list, its memory is purged — and the owner's slow path puts the
//! blocks back (`fill_holes`) before it carves new ones.
//!
//! Invariants:
//! - S1: a page is owned by exactly one of: a heap (`heap` set), the
//!   abandoned lists (`heap` null, `abandoned` set), the pool.
//! - S2: `used` = blocks handed out − blocks freed locally − remote frees
//!   collected; a page goes to the pool only when `used == 0`, so no remote
//!   free can still arrive for it.
//! - S3: segments are destroyed only when all their pages are in the pool,
//!   and never while the pool lock is held (R1 in `heap`).
//! - S4: a thread freeing into a page it does not own reads the page only
//!   while its block is still counted in `used` (so by S2 the page cannot
//!   be in the pool, or back with spf-core), and its last access is the one
//!   CAS that pushes the block on `thread_free` — or a chain of blocks of
//!   the page that the thread freed and buffered (`heap::remote`), every
//!   one of them counted in `used` until that CAS. A freed block that the
//!   freeing thread caches to hand out again (`heap::cache`) stays
//!   counted too, and reaches the page only through such a push (or a
//!   local free, when the thread owns the page). Whether the page is
//!   abandoned is read from that same word (the `ABANDONED` tag): a freer
//!   that sees the tag does not push but frees under the abandoned lists'
//!   lock, still holding its block. So no freer can be reading a page that
//!   goes to the pool, and a remote free costs one locked instruction.
//! - S5: another thread may reclaim a page of a heap it does not own only
//!   under that heap's lock, only when the page is not the first of its
//!   class queue, and only when every block out is on `thread_free`
//!   (`Page::reset_if_free`): the page either stays in the heap's queue,
//!   empty, its memory purged (`reclaim_if_free`), or — if it is neither
//!   the first nor the last of its queue, so that the queue's own words
//!   are not written — leaves the queue for the pool (`heap`'s hand-over).
//!   The owner takes its heap's lock around every
//!   change to its queues and every slow-path use of its pages, so the
//!   only unlocked owner accesses left are the fast paths: allocation from
//!   the first page of a queue, and local frees into pages holding a live
//!   block — neither reaches a page S5 may reclaim: a local free reads
//!   what it needs of the page before its Release store of `used`, and
//!   touches the page after it only if that store made `used` 0 (then no
//!   remote chain waits, S2, and no reclaimer takes the page).
//! - S6: a wholly free segment is destroyed when all its pages are purged
//!   (its memory decayed) or when the pool holds more than
//!   `KEEP_FREE_SEGMENTS` wholly free segments of its kind, and only if
//!   the pool keeps more than two free segments' worth of the kind:
//!   freed memory stays for the decay time, whole segments' included,
//!   within that cap. `spf::purge()` purges every pooled page, so it
//!   returns every free segment past the two kept. (A page whose purge
//!   failed, or that was pooled dirty before `SPF_DECAY_MS` was set to 0,
//!   keeps its segment, within the cap, until `spf::purge()` — or, with a
//!   decay time, a later sweep — purges it.)

use crate::lock::SpinLock;
use crate::options;
use crate::size_class::{block_size, is_small};
use core::cell::Cell;
use core::ptr::{self, null_mut};
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use spf_core::{Region, RegionOptions};

pub const SEGMENT_SIZE: usize = 4 << 20;
/// A small page, and the stride of page descriptors: 64 KiB. Not the
/// kernel's page (spf-core's `PAGE_SIZE`, 4 KiB), hence the name.
pub const SMALL_PAGE_SIZE: usize = 1 << SMALL_PAGE_SHIFT;
/// log2 of `SMALL_PAGE_SIZE`: from a pointer to its descriptor is a shift.
/// Everything else follows from it (`examples/residency.rs` and the
/// report of issue 13 compare 16, 32 and 64 KiB).
pub const SMALL_PAGE_SHIFT: u32 = 16;
pub const PAGES_PER_SEGMENT: usize = SEGMENT_SIZE / SMALL_PAGE_SIZE;
/// A medium page: 256 KiB, `PER_MEDIUM` descriptors apart (see the module
/// docs for why not larger).
pub const MEDIUM_PAGE_SIZE: usize = 256 << 10;
/// Descriptors per medium page.
pub const PER_MEDIUM: usize = MEDIUM_PAGE_SIZE / SMALL_PAGE_SIZE;
/// Descriptors whose memory holds the segment's header (never pages): 1
/// with 64 KiB pages.
pub const HEADER_PAGES: usize = core::mem::size_of::<Segment>().div_ceil(SMALL_PAGE_SIZE);
const SMALL_PAGES: core::ops::Range<usize> = HEADER_PAGES..PAGES_PER_SEGMENT;
pub const MAGIC: usize = 0x5350_4653_4547_4d54; // "SPFSEGMT"
/// Free segments' worth of pages of each kind the pool keeps, purged,
/// rather than return whole free segments to spf-core.
const KEEP_SEGMENTS: usize = 2;
/// Pooled pages that `page_alloc` looks through for one that last served
/// the requested class (see the module docs, "The pool").
const SAME_CLASS_SCAN: usize = 32;
/// Wholly free segments of each kind the pool keeps dirty, for the decay
/// time, before it returns any more at once (S6): 128 MiB of each kind at
/// most, for a program that frees a great deal and then stops calling the
/// allocator (decay runs only on its calls).
const KEEP_FREE_SEGMENTS: usize = 32;

/// The two kinds of pages. A segment holds pages of one kind only, so it
/// has the same kind; the pool keeps one list of each.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    /// 64 KiB pages of small classes (blocks up to 8 KiB), 63 a segment.
    Small = 0,
    /// 256 KiB pages of medium classes (blocks up to 256 KiB), 15 a segment.
    Medium = 1,
}

impl PageKind {
    /// Both kinds, in the order the pool's arrays index them.
    const ALL: [PageKind; 2] = [PageKind::Small, PageKind::Medium];

    /// The kind of page that serves `class`.
    pub const fn of_class(class: usize) -> PageKind {
        if is_small(class) {
            PageKind::Small
        } else {
            PageKind::Medium
        }
    }

    /// Bytes of memory a page of this kind spans.
    pub const fn page_size(self) -> usize {
        match self {
            PageKind::Small => SMALL_PAGE_SIZE,
            PageKind::Medium => MEDIUM_PAGE_SIZE,
        }
    }

    /// The segment header's `index_mask` for a segment of this kind.
    const fn index_mask(self) -> usize {
        match self {
            PageKind::Small => PAGES_PER_SEGMENT - 1,
            PageKind::Medium => (PAGES_PER_SEGMENT - 1) & !(PER_MEDIUM - 1),
        }
    }

    /// The descriptor indices of the pages of a segment of this kind.
    fn spans(self) -> impl Iterator<Item = usize> {
        match self {
            PageKind::Small => SMALL_PAGES.step_by(1),
            PageKind::Medium => (PER_MEDIUM..PAGES_PER_SEGMENT).step_by(PER_MEDIUM),
        }
    }

    /// The statistics counter of pages of this kind owned by heaps or
    /// abandoned.
    fn in_use(self) -> &'static AtomicU64 {
        match self {
            PageKind::Small => &SMALL_PAGES_IN_USE,
            PageKind::Medium => &MEDIUM_PAGES_IN_USE,
        }
    }
}

/// A free block: its first word links the free list.
#[repr(C)]
pub struct Block {
    pub next: *mut Block,
}

/// One page's descriptor. Owner-only fields are `Cell`s: the owner (S1) is
/// the only thread that touches them — a heap's thread (or, under S5, a
/// thread holding that heap's lock), the holder of the abandoned lists'
/// lock, or the holder of the pool lock, as the page's state says. Each
/// field below names who writes it. The first 64-byte line holds
/// everything an allocation writes and a local free writes; the second
/// holds all a remote free touches — `thread_free`, which other threads
/// write, `heap`, which every free reads to tell local from remote, and a
/// copy of the block size — beside fields of pooled and abandoned pages
/// only. 128 bytes in all (release builds), so finding a descriptor is a
/// shift.
#[repr(C, align(64))]
pub struct Page {
    /// Free blocks the owner allocates from, linked through their first
    /// word. Written by the owner: `pop`, `take_local_frees`, `collect`
    /// (`link_remote`), `extend`, `fill_holes`, `purge_free_runs`; by a
    /// remote freer under the abandoned lists' lock while the page is
    /// abandoned (`free_abandoned`); reset by `init`, `page_free` and a
    /// reclaimer under S5.
    pub free: Cell<*mut Block>,
    /// The owner's own frees, linked as `free` is, until `free` runs dry
    /// and they become the new `free` (`take_local_frees`, O(1)), as in
    /// mimalloc. Kept apart so that an allocation does not take back the
    /// block freed just before it: on one list, a free/alloc loop runs
    /// through two store-to-load round trips a pair (the list head, then
    /// the block's link), which made a 16 B pair 1.5× slower on an AMD
    /// Zen 4 core. Written by the owner's local frees and emptied by
    /// `take_local_frees`; gathered onto `free` by `purge_free_runs`; reset
    /// with `free`. Code that asks whether the owner holds free blocks asks
    /// `has_listed_free`.
    pub local_free: Cell<*mut Block>,
    /// Blocks out: handed out minus freed locally minus remote frees
    /// collected (S2). Written by the owner only; an atomic so that another
    /// thread reclaiming the page (`reclaim_if_free`, under the heap's
    /// lock) may read it: the owner's local free stores it with Release,
    /// plain loads and stores otherwise (no RMW).
    pub used: AtomicU32,
    /// Blocks carved so far (`extend`, by the owner); blocks past it are
    /// untouched memory. Reset to 0 by `init` and by a reclaimer (S5).
    pub capacity: Cell<u32>,
    /// Blocks the page holds in all (its bytes / the block size). Written
    /// by `init` when the page is taken from the pool; read by `extend`
    /// and by `lookup` (which checks a pointer against it).
    pub reserved: Cell<u32>,
    /// The size class served. Written by `init` only; read by frees (to
    /// find the class queue), `lookup`, `misuse` and the pool (the page's
    /// kind).
    pub class: Cell<u32>,
    /// The class's block size (read where the class's table would be, on
    /// the free path). Written by `init` only.
    pub size: Cell<u32>,
    /// The start of the memory the descriptor describes: `segment + i ×
    /// 64 KiB`. Written once by `segment_new`, never changed.
    pub area: Cell<*mut u8>,
    /// The next page in whichever list holds the page: its heap's class
    /// queue (written under the heap's lock), an abandoned list (under
    /// their lock) or a pool list (under the pool lock). In a segment's
    /// first descriptor, which describes the header and is never a page,
    /// the link of the deferred-destroy stack (`defer_destroy`).
    pub next: Cell<*mut Page>,
    /// The previous page in the same list as `next`, written with it.
    pub prev: Cell<*mut Page>,
    /// When the page went to the pool (`monotonic_ns`): written by
    /// `page_free` (by the page's last owner) and `segment_new`; read by
    /// the pool's decay under the pool lock. While the page is abandoned:
    /// when it was (written by `put_abandoned`, read by
    /// `purge_abandoned`, both under the abandoned lists' lock).
    pub freed_at: Cell<u64>,
    /// Pooled and purged: its memory reads as zero. Set by `purge` (the
    /// pool's decay, on pages it took off the lists) and `segment_new`,
    /// cleared by `page_free`; read by the pool's decay.
    pub purged: Cell<bool>,
    /// On an abandoned list. Written and read only under the abandoned
    /// lists' lock (`put_abandoned`, `free_abandoned`, `adopt`).
    pub abandoned: Cell<bool>,
    /// Blocks freed by other threads: one word holding the chain's head
    /// and its length ([`RemoteChain`]), so that the owner takes the whole
    /// chain with one swap and knows how many blocks it holds without
    /// walking it. Pushed with a CAS by remote freers, taken with a swap by
    /// the owner (`collect`); exactly `ABANDONED` while the page is on an
    /// abandoned list (S4: set by `collect_and_close`, cleared by `reopen`,
    /// both under the abandoned lists' lock); cleared by `page_free` and a
    /// reclaimer (S5). Not on the line of the fields the owner writes on
    /// every allocation.
    pub thread_free: AtomicUsize,
    /// The owning heap; null while abandoned or pooled. Written by the heap
    /// taking the page (`take`, Release) and by the owner giving it up
    /// (`put_abandoned`, `page_free`); compared by every free, read by
    /// remote freers as a hint of whom to tell. On the second line, beside
    /// `thread_free`: a remote free reads only the line it CASes, and the
    /// first line stays in the owner's cache (when `heap` sat on the first
    /// line, every remote free missed on it and the owner's next write to
    /// the page missed in turn).
    pub heap: AtomicPtr<crate::heap::Heap>,
    /// `size`, copied by `init` onto this line for remote freers (they
    /// count it out of their own heap's `allocated`).
    pub remote_size: Cell<u32>,
    /// Debug builds: one bit per block, set while it is allocated (the
    /// block ledger of `misuse`): set by `pop`, cleared by whichever
    /// thread frees the block, zeroed by `init`.
    #[cfg(debug_assertions)]
    pub ledger: [core::sync::atomic::AtomicU64; LEDGER_WORDS],
    /// Holes: one bit per 4 KiB run of the page (`HOLE_RUN`) whose memory
    /// went back to the kernel while the page held live blocks
    /// (`purge_free_runs`, the owner's decay). The blocks that start in a
    /// hole are free but on no list — neither on `free` nor on
    /// `thread_free`, nor counted in `used` — until the owner's slow path
    /// puts them back on `free` (`fill_holes`, before carving new blocks).
    /// Owner-only: under its heap's lock, or unlocked on the first page of
    /// a queue (which no reclaimer touches, S5); cleared by `init` and by a
    /// reclaimer resetting the page (S5).
    pub holes: [Cell<u64>; HOLE_WORDS],
}

/// The granule at which free memory inside a page that still holds live
/// blocks goes back to the kernel: the kernel's page.
pub const HOLE_RUN: usize = 4096;
/// Words of `Page::holes`: one bit per run of the largest page (256 KiB).
pub const HOLE_WORDS: usize = MEDIUM_PAGE_SIZE / HOLE_RUN / 64;
/// Bits of the per-block map `purge_free_runs` builds: one per block of
/// the page with the most blocks (64 KiB of 16-byte blocks).
const MAX_BLOCKS: usize = SMALL_PAGE_SIZE / 16;

/// The tag `thread_free` holds, alone, while its page is abandoned: blocks
/// are at least 16-byte aligned, so no chain's word has this bit.
pub const ABANDONED: usize = 1;

/// A chain of remotely freed blocks as `thread_free` holds it, in one word:
/// the head's offset from its segment's start in the low 32 bits (blocks
/// start past the segment's first 64 KiB, so 0 means no chain) and the
/// number of blocks in the high 32. The length lets the owner account for
/// a whole chain (S2) and splice it onto an empty `free` list in O(1):
/// walking it touched every freed block once more, on a line the freer
/// had written (a profile of lock-free larson at 8 threads spent 22 % of
/// its samples in that walk).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RemoteChain(usize);

const _: () = assert!(usize::BITS == 64 && SEGMENT_SIZE <= 1 << 32);

impl RemoteChain {
    const EMPTY: RemoteChain = RemoteChain(0);

    fn word(self) -> usize {
        self.0
    }

    /// Blocks in the chain.
    fn len(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The first block, given the page's segment; null for no chain.
    fn head(self, segment: *mut Segment) -> *mut Block {
        let offset = self.0 & 0xffff_ffff;
        if offset == 0 {
            null_mut()
        } else {
            (segment as usize + offset) as *mut Block
        }
    }

    /// A chain of `n` blocks starting at `head` pushed in front of this
    /// chain (its last block already links to this chain's head).
    fn push(self, head: *mut Block, n: u32, segment: *mut Segment) -> RemoteChain {
        let offset = head as usize - segment as usize;
        debug_assert!(
            (HEADER_PAGES * SMALL_PAGE_SIZE..SEGMENT_SIZE).contains(&offset) && offset % 16 == 0
        );
        RemoteChain(((self.len() as usize + n as usize) << 32) | offset)
    }
}

/// What `Page::push_remote` did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Pushed {
    /// Pushed onto an empty `thread_free`: the page newly holds remote
    /// frees (the one push that tells the owner).
    First,
    /// Pushed onto a chain already waiting.
    More,
    /// Not pushed: the page is abandoned (S4).
    Abandoned,
}

const _: () = assert!(
    core::mem::offset_of!(Page, local_free) < 64
        && core::mem::offset_of!(Page, used) < 64
        && core::mem::offset_of!(Page, size) < 64
        && core::mem::offset_of!(Page, thread_free) >= 64
        && core::mem::offset_of!(Page, heap) >= 64
        && core::mem::offset_of!(Page, remote_size) >= 64
        && core::mem::offset_of!(Page, remote_size) < 128
);
#[cfg(not(debug_assertions))]
const _: () = assert!(core::mem::size_of::<Page>() == 128);

/// Words of the block ledger: one bit for each block of the page with the
/// most blocks (64 KiB of 16-byte blocks).
#[cfg(debug_assertions)]
pub const LEDGER_WORDS: usize = SMALL_PAGE_SIZE / 16 / 64;

// The header lives before a medium segment's first page.
const _: () = assert!(HEADER_PAGES * SMALL_PAGE_SIZE <= MEDIUM_PAGE_SIZE);

/// A segment's header, at its start: the allocator's metadata for the
/// segment's 4 MiB, in its first 64 KiB.
#[repr(C)]
pub struct Segment {
    /// `MAGIC`: written once by `segment_new`; `lookup` reads it to tell
    /// a segment from a large block, `segment_destroy` checks it.
    pub magic: usize,
    /// Pages of this segment outside the pool (held by heaps, abandoned,
    /// or taken off the lists by the pool's decay to be purged). Read and
    /// written only under the pool lock; 0 makes the segment a candidate
    /// for destruction (S3).
    used: Cell<u32>,
    /// One descriptor per 64 KiB of the segment: `pages[i]` describes the
    /// memory at `segment + i × 64 KiB`. Only the descriptors of the
    /// segment's kind are pages (`PageKind::spans`); the others — the
    /// first, which describes the header, and in a medium segment those
    /// inside a medium page or, like 1–3, beside the header before the
    /// first — are never used (the first links deferred destruction).
    /// Their fields are written as `Page` says.
    pub pages: [Page; PAGES_PER_SEGMENT],
    /// Pointer to descriptor: `(offset >> 16) & index_mask` is the index of
    /// the page holding `segment + offset` — 63 in a small segment, 0x3c in
    /// a medium one (descriptors 4, 8, …, 60). Fixed when the segment is
    /// made; read by every free. After the descriptors, away from the
    /// header's first bytes: blocks of 4 KiB sizes start on 4 KiB
    /// boundaries, and a free that stores at offset 0 of one and then
    /// loads near offset 0 of the segment stalls on the processor's false
    /// 4 KiB aliasing (4 KiB pairs: 6.7–8.9 ns with the mask at offset 8,
    /// 5.8–7.0 here; 5.1 before the mask existed).
    index_mask: usize,
}

// A medium page holds at least one block of the largest medium class, is
// a power-of-two number of descriptors (the mask), and has hole bits.
const _: () = assert!(
    MEDIUM_PAGE_SIZE % SMALL_PAGE_SIZE == 0
        && MEDIUM_PAGE_SIZE >= crate::size_class::MEDIUM_MAX
        && PER_MEDIUM.is_power_of_two()
        && HOLE_WORDS >= 1
);

/// The descriptor of the page holding `ptr`.
///
/// # Safety
/// `ptr` points into a page of a live segment (a block spf handed out and
/// that is not freed yet).
#[inline]
pub unsafe fn page_of(ptr: *mut u8) -> *mut Page {
    let seg = (ptr as usize & !(SEGMENT_SIZE - 1)) as *mut Segment;
    let offset = ptr as usize & (SEGMENT_SIZE - 1);
    // SAFETY: the caller's contract: the header is a live Segment, whose
    // mask never changes.
    let index = (offset >> SMALL_PAGE_SHIFT) & unsafe { (*seg).index_mask };
    // SAFETY: as above; the mask keeps the index below PAGES_PER_SEGMENT.
    unsafe { ptr::addr_of_mut!((*seg).pages[index]) }
}

impl Page {
    /// The segment holding this page.
    pub fn segment(&self) -> *mut Segment {
        (self as *const Page as usize & !(SEGMENT_SIZE - 1)) as *mut Segment
    }

    /// Prepares a pooled page to serve `class` (owner: the caller).
    pub fn init(&self, class: usize) {
        let size = block_size(class);
        let len = PageKind::of_class(class).page_size();
        self.free.set(null_mut());
        self.local_free.set(null_mut());
        self.used.store(0, Ordering::Relaxed);
        self.capacity.set(0);
        #[cfg(debug_assertions)]
        for word in &self.ledger {
            word.store(0, Ordering::Relaxed);
        }
        for word in &self.holes {
            word.set(0);
        }
        self.reserved.set((len / size) as u32);
        self.class.set(class as u32);
        self.size.set(size as u32);
        self.remote_size.set(size as u32);
        self.next.set(null_mut());
        self.prev.set(null_mut());
        debug_assert_eq!(self.thread_free.load(Ordering::Relaxed), 0, "S2");
    }

    /// Carves more blocks from the untouched part of the page into `free`:
    /// about 4 KiB at a time, so a fresh page is touched as it is used.
    pub fn extend(&self) {
        let size = block_size(self.class.get() as usize);
        let start = self.capacity.get() as usize;
        debug_assert!(
            start < self.reserved.get() as usize,
            "extending a full page"
        );
        let n = (4096 / size).clamp(1, (self.reserved.get() as usize) - start);
        let base = self.area.get();
        let mut head = self.free.get();
        for i in (start..start + n).rev() {
            let b = base.wrapping_add(i * size) as *mut Block;
            // SAFETY: block i lies inside this page's area (i < reserved),
            // which is committed memory owned by the page's owner.
            unsafe { (*b).next = head };
            head = b;
        }
        self.free.set(head);
        self.capacity.set((start + n) as u32);
    }

    /// When `free` is empty, makes the owner's local frees the new `free`
    /// list (O(1)). True if `free` then holds a block. By the owner.
    #[inline]
    pub fn take_local_frees(&self) -> bool {
        if self.free.get().is_null() {
            self.free.set(self.local_free.replace(null_mut()));
        }
        !self.free.get().is_null()
    }

    /// Whether the owner has free blocks of the page on its lists (`free`
    /// or `local_free`), not counting remote frees and holes.
    pub fn has_listed_free(&self) -> bool {
        !self.free.get().is_null() || !self.local_free.get().is_null()
    }

    /// Puts the local frees on `free` whatever it holds, walking them to
    /// their tail: for code that walks every free block (`purge_free_runs`).
    /// By the owner.
    fn gather_local_frees(&self) {
        let local = self.local_free.replace(null_mut());
        if local.is_null() {
            return;
        }
        let mut tail = local;
        // SAFETY: blocks on our page's local list, linked through `next`
        // and ending in null; we own the page (the caller is its owner).
        while let Some(next) = unsafe { (*tail).next.as_mut() } {
            tail = next;
        }
        // SAFETY: as above: we relink the list's last block.
        unsafe { (*tail).next = self.free.get() };
        self.free.set(local);
    }

    /// Whether the page has holes (`holes`) to fill.
    pub fn has_holes(&self) -> bool {
        self.holes.iter().any(|w| w.get() != 0)
    }

    /// Puts the blocks that start in the page's lowest holes back on
    /// `free`, hole by hole until at least one block is there or no hole is
    /// left (a hole inside one large block has none of its own). Their
    /// memory reads as zero, or faults in as zero when written: like
    /// `extend`, it touches the page as it is used. By the owner, under its
    /// heap's lock or on the first page of a queue (S5).
    pub fn fill_holes(&self) {
        let size = self.size.get() as usize;
        let capacity = self.capacity.get() as usize;
        let base = self.area.get();
        for (w, word) in self.holes.iter().enumerate() {
            while word.get() != 0 {
                let bit = word.get().trailing_zeros() as usize;
                word.set(word.get() & !(1 << bit));
                let run = w * 64 + bit;
                let first = (run * HOLE_RUN).div_ceil(size);
                let end = ((run + 1) * HOLE_RUN).div_ceil(size).min(capacity);
                let mut head = self.free.get();
                for i in (first..end).rev() {
                    let b = base.wrapping_add(i * size) as *mut Block;
                    // SAFETY: block i starts in a hole of this page and
                    // is carved (i < capacity): a free block on no list,
                    // in committed memory the owner holds (`holes`).
                    unsafe { (*b).next = head };
                    head = b;
                }
                self.free.set(head);
                if !head.is_null() {
                    return;
                }
            }
        }
    }

    /// Gives the kernel back every 4 KiB run of the page covered only by
    /// free blocks on `free` or `local_free` (gathered onto `free` first),
    /// or by blocks already in holes, with the page
    /// still in use: the blocks that start in such a run leave `free` and
    /// the run becomes a hole (`holes`) for `fill_holes` to refill. Runs
    /// already holes are not purged again. Returns the runs purged.
    ///
    /// # Safety
    /// The caller is the page's owner (S1) and holds its heap's lock, or
    /// the page is abandoned and the caller holds the abandoned lists'
    /// lock; no other code walks `free` meanwhile.
    pub unsafe fn purge_free_runs(&self) -> usize {
        self.gather_local_frees();
        if self.free.get().is_null() {
            return 0;
        }
        let size = self.size.get() as usize;
        let capacity = self.capacity.get() as usize;
        let base = self.area.get() as usize;
        let runs = (capacity * size / HOLE_RUN).min(HOLE_WORDS * 64);
        if runs == 0 || capacity > MAX_BLOCKS {
            return 0;
        }
        let hole = |run: usize| self.holes[run / 64].get() & (1 << (run % 64)) != 0;
        // Which carved blocks are free: on `free`, or starting in a hole.
        let mut free = [0u64; MAX_BLOCKS / 64];
        let mut b = self.free.get();
        while !b.is_null() {
            let i = (b as usize - base) / size;
            free[i / 64] |= 1 << (i % 64);
            // SAFETY: a block on our page's free list (the caller's
            // contract): its link is valid.
            b = unsafe { (*b).next };
        }
        for i in 0..capacity {
            if hole(i * size / HOLE_RUN) {
                free[i / 64] |= 1 << (i % 64);
            }
        }
        let is_free = |i: usize| free[i / 64] & (1 << (i % 64)) != 0;
        // Runs to purge: not holes yet, and every block overlapping is free.
        let mut purge = [0u64; HOLE_WORDS];
        let mut any = false;
        for run in 0..runs {
            if hole(run) {
                continue;
            }
            let first = run * HOLE_RUN / size;
            let last = ((run + 1) * HOLE_RUN - 1) / size;
            if (first..=last).all(is_free) {
                purge[run / 64] |= 1 << (run % 64);
                any = true;
            }
        }
        if !any {
            return 0;
        }
        let purging = |i: usize| {
            let run = i * size / HOLE_RUN;
            purge[run / 64] & (1 << (run % 64)) != 0
        };
        // Take the blocks that start in those runs off `free`, in order.
        let mut head: *mut Block = null_mut();
        let mut tail: *mut Block = null_mut();
        let mut b = self.free.get();
        while !b.is_null() {
            // SAFETY: as above.
            let next = unsafe { (*b).next };
            if !purging((b as usize - base) / size) {
                if tail.is_null() {
                    head = b;
                } else {
                    // SAFETY: `tail` is a block of our free list we kept.
                    unsafe { (*tail).next = b };
                }
                tail = b;
            }
            b = next;
        }
        if !tail.is_null() {
            // SAFETY: as above.
            unsafe { (*tail).next = null_mut() };
        }
        self.free.set(head);
        let mut purged = 0;
        let mut run = 0;
        while run < runs {
            if purge[run / 64] & (1 << (run % 64)) == 0 {
                run += 1;
                continue;
            }
            let start = run;
            while run < runs && purge[run / 64] & (1 << (run % 64)) != 0 {
                self.holes[run / 64].set(self.holes[run / 64].get() | (1 << (run % 64)));
                run += 1;
            }
            // SAFETY: whole 4 KiB runs of our page, inside its live segment,
            // covered only by free blocks that are now on no list (or whose
            // link lies in a run before, not purged): nothing reads them
            // until `fill_holes` or an allocation writes them afresh. A
            // failed purge leaves them resident, holes all the same.
            let _ = unsafe {
                spf_core::purge_pages(
                    (base + start * HOLE_RUN) as *mut u8,
                    (run - start) * HOLE_RUN,
                )
            };
            purged += run - start;
        }
        purged
    }

    /// Moves remote frees into `free`, so the owner can allocate from them;
    /// updates `used` (S2) and returns how many it moved. Only on a page
    /// that is not abandoned.
    pub fn collect(&self) -> u32 {
        // A plain load first: most pages have no remote frees, and a load
        // leaves the line shared with the freers.
        if self.thread_free.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        // Acquire pairs with the Release of the remote pushes: the blocks'
        // `next` words are visible.
        let remote = self.thread_free.swap(0, Ordering::Acquire);
        debug_assert_ne!(remote, ABANDONED, "S4: collect of an abandoned page");
        // SAFETY: the chain just swapped off this page's `thread_free`
        // (not the tag, asserted above), by its owner.
        unsafe { self.link_remote(RemoteChain(remote)) };
        RemoteChain(remote).len()
    }

    /// Remote frees waiting on `thread_free` (a Relaxed read of the chain's
    /// length; more may arrive unless no block is live). Owner only, on a
    /// page that is not abandoned.
    pub fn remote_waiting(&self) -> u32 {
        RemoteChain(self.thread_free.load(Ordering::Relaxed)).len()
    }

    /// Empties a page whose every block out waits on `thread_free` (`used`
    /// equals the chain's length): takes the chain off without walking it
    /// and sets `used` to 0 (S2), leaving `free` as it is (the page is about
    /// to go to the pool, which resets it). False, and nothing changed, if
    /// the page still has live blocks.
    pub fn take_remote_if_empty(&self) -> bool {
        let used = self.used.load(Ordering::Relaxed);
        if self.remote_waiting() != used {
            return false;
        }
        if used != 0 {
            // No block is live, so nothing is pushed meanwhile. Acquire
            // pairs with the pushes' Release, as in `collect`.
            let remote = self.thread_free.swap(0, Ordering::Acquire);
            debug_assert_eq!(RemoteChain(remote).len(), used, "S2");
            self.used.store(0, Ordering::Relaxed);
        }
        true
    }

    /// Collects the remote frees and tags the page `ABANDONED` in the same
    /// swap: from then on freers do not push (S4). Under the abandoned
    /// lists' lock, by the page's owner.
    pub fn collect_and_close(&self) {
        // Acquire: as in `collect`.
        let remote = self.thread_free.swap(ABANDONED, Ordering::Acquire);
        // SAFETY: the chain just swapped off this page's `thread_free`
        // (never the tag: only this swap sets it, on a page its owner
        // holds), by its owner.
        unsafe { self.link_remote(RemoteChain(remote)) };
    }

    /// Clears the `ABANDONED` tag of a page taken off an abandoned list
    /// (under the lists' lock): freers push again.
    pub fn reopen(&self) {
        // Relaxed: no block was pushed while tagged; the heap that adopts
        // the page publishes it through its own ownership (Release in
        // `take`), and a freer that saw the tag sees the page untagged
        // after taking the lock we hold.
        debug_assert_eq!(self.thread_free.load(Ordering::Relaxed), ABANDONED);
        self.thread_free.store(0, Ordering::Relaxed);
    }

    /// Links a chain of remotely freed blocks into `free` and counts them
    /// out of `used` (S2): onto an empty `free` list in O(1) (the common
    /// case: the owner collects when `free` runs dry), else by walking the
    /// chain to its tail.
    ///
    /// # Safety
    /// `remote` was taken off this page's `thread_free` (so its blocks are
    /// free blocks of this page, linked through `next`), and the caller
    /// owns the page (S1).
    unsafe fn link_remote(&self, remote: RemoteChain) {
        let n = remote.len();
        let head = remote.head(self.segment());
        if head.is_null() {
            return;
        }
        let free = self.free.get();
        if !free.is_null() || cfg!(debug_assertions) {
            let mut tail = head;
            let mut walked = 1u32;
            // SAFETY: the caller's contract: free blocks of this page,
            // chained through `next` and ending in null.
            while let Some(next) = unsafe { (*tail).next.as_mut() } {
                tail = next;
                walked += 1;
            }
            debug_assert_eq!(walked, n, "a remote chain's length is wrong");
            // SAFETY: as above; we own the page and relink its last block.
            unsafe { (*tail).next = free };
        }
        self.free.set(head);
        // Relaxed: owner-only writer (see `used`).
        self.used
            .store(self.used.load(Ordering::Relaxed) - n, Ordering::Relaxed);
    }

    /// Pushes a block freed by a thread that does not own the page, unless
    /// the page is abandoned (S4); says which.
    ///
    /// # Safety
    /// `block` is a block of this page that the caller is freeing, once,
    /// still counted in `used` (S4), and linked by no one else.
    #[inline]
    pub unsafe fn push_remote(&self, block: *mut Block) -> Pushed {
        // SAFETY: the caller's contract, for a chain of one.
        unsafe { self.push_remote_chain(block, block, 1) }
    }

    /// Pushes a chain of `n` blocks freed by threads that do not own the
    /// page — `head` linked through `next` to `tail` — with one CAS,
    /// unless the page is abandoned (S4); says which. (A remote-free
    /// buffer's batch, `heap::remote`; a single free is a chain of one.)
    ///
    /// # Safety
    /// `head` … `tail` are `n` blocks of this page that the caller is
    /// freeing, once each, all still counted in `used` (S4), linked by no
    /// one else, `tail` last.
    #[inline]
    pub unsafe fn push_remote_chain(&self, head: *mut Block, tail: *mut Block, n: u32) -> Pushed {
        let segment = self.segment();
        let mut word = self.thread_free.load(Ordering::Relaxed);
        loop {
            if word == ABANDONED {
                return Pushed::Abandoned;
            }
            let chain = RemoteChain(word);
            // SAFETY: the caller's contract: the blocks are ours to give
            // back; nobody else links them.
            unsafe { (*tail).next = chain.head(segment) };
            // Release pairs with the Acquire swaps of `collect` and
            // `collect_and_close`: every `next` word of the chain is
            // written before its head is seen. Failing on the tag keeps S4.
            match self.thread_free.compare_exchange_weak(
                word,
                chain.push(head, n, segment).word(),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) if chain == RemoteChain::EMPTY => return Pushed::First,
                Ok(_) => return Pushed::More,
                Err(seen) => word = seen,
            }
        }
    }

    /// Bytes of memory the page spans.
    pub fn bytes(&self) -> usize {
        self.kind().page_size()
    }

    /// The kind of page, from the class it serves.
    pub fn kind(&self) -> PageKind {
        PageKind::of_class(self.class.get() as usize)
    }

    /// Reclaims a page of another thread's heap whose every block out was
    /// freed by other threads (all are waiting on `thread_free`): the page
    /// becomes an empty page of the same heap and class with no blocks
    /// carved, and its memory goes back to the kernel (S5). True if it did.
    ///
    /// # Safety
    /// As `reset_if_free`.
    pub unsafe fn reclaim_if_free(&self) -> bool {
        // SAFETY: the caller's contract.
        let carved = match unsafe { self.reset_if_free() } {
            Some(carved) => carved,
            None => return false,
        };
        // SAFETY: the carved part of the page, inside its live segment
        // (S3: the page is a heap's); nothing in it will be read again, as
        // blocks are carved afresh from `capacity` 0. A failed purge leaves
        // the memory resident, the page empty all the same.
        let _ = unsafe { spf_core::purge_pages(self.area.get(), carved) };
        true
    }

    /// Empties a page of another thread's heap whose every block out was
    /// freed by other threads (all are waiting on `thread_free`): `used`
    /// 0, no blocks carved, `thread_free` clear (S5). Returns the bytes
    /// that had been carved (rounded up to 4 KiB), or `None` if a block is
    /// still live.
    ///
    /// Why the count proves the page free: under the heap's lock nobody
    /// collects `thread_free`, so the chain seen is stable apart from pushes
    /// at its head, and the `n` blocks on it are counted in `used`. `used`
    /// can only fall meanwhile (the owner's local frees), as only locked
    /// code or an allocation from the class's first page raises it. So a
    /// `used` of `n` read after the chain means no block of the page is
    /// live: nothing will push to it or free into it, and the owner touches
    /// it again only under the lock we hold.
    ///
    /// # Safety
    /// The caller holds the lock of the heap that owns the page (S1), and
    /// the page is not the first of its class queue (the only page the
    /// owner allocates from without that lock).
    pub unsafe fn reset_if_free(&self) -> Option<usize> {
        // Acquire pairs with the Release pushes: the chain's links (and the
        // release sequence of the CASes before it) are visible.
        let word = self.thread_free.load(Ordering::Acquire);
        if word == 0 || word == ABANDONED {
            return None;
        }
        let n = RemoteChain(word).len();
        // Acquire pairs with the Release store of the owner's last local
        // free: its writes to the page (its free list) happen before ours.
        if self.used.load(Ordering::Acquire) != n {
            return None;
        }
        // No block is live (see above): the page's fields are ours until
        // the caller releases the heap's lock.
        self.thread_free.store(0, Ordering::Relaxed);
        let carved = (self.capacity.get() as usize * self.size.get() as usize)
            .next_multiple_of(4096)
            .min(self.bytes());
        self.free.set(null_mut());
        self.local_free.set(null_mut());
        self.capacity.set(0);
        for word in &self.holes {
            word.set(0);
        }
        self.used.store(0, Ordering::Relaxed);
        #[cfg(debug_assertions)]
        for word in &self.ledger {
            debug_assert_eq!(
                word.load(Ordering::Relaxed),
                0,
                "a free page with live blocks"
            );
        }
        Some(carved)
    }
}

/// A doubly linked list of pages through `next`/`prev`. Its owner (a
/// heap's class queue, an abandoned list, a pool list) guards it and its
/// members' links with its lock.
#[derive(Clone, Copy)]
pub struct PageList {
    /// The first page (in a class queue, the one allocated from), or null.
    pub first: *mut Page,
    /// The last page, or null.
    pub last: *mut Page,
}

impl PageList {
    pub const fn new() -> Self {
        PageList {
            first: null_mut(),
            last: null_mut(),
        }
    }

    /// # Safety
    /// `p` is a valid page, not in any list, owned by the list's owner.
    pub unsafe fn push_front(&mut self, p: *mut Page) {
        // SAFETY: the caller's contract; list members are valid pages.
        unsafe {
            (*p).prev.set(null_mut());
            (*p).next.set(self.first);
            if self.first.is_null() {
                self.last = p;
            } else {
                (*self.first).prev.set(p);
            }
        }
        self.first = p;
    }

    /// # Safety
    /// As `push_front`.
    pub unsafe fn push_back(&mut self, p: *mut Page) {
        // SAFETY: the caller's contract.
        unsafe {
            (*p).next.set(null_mut());
            (*p).prev.set(self.last);
            if self.last.is_null() {
                self.first = p;
            } else {
                (*self.last).next.set(p);
            }
        }
        self.last = p;
    }

    /// The first of the list's leading pages that are not purged (a pool
    /// list: pages freed within the decay time come first) whose last
    /// class was `class`, looking at most `SAME_CLASS_SCAN` pages.
    ///
    /// # Safety
    /// The caller owns the list's pages (a pool list, under the pool lock).
    unsafe fn dirty_of_class(&self, class: usize) -> Option<*mut Page> {
        let mut p = self.first;
        for _ in 0..SAME_CLASS_SCAN {
            if p.is_null() {
                break;
            }
            // SAFETY: a member of the list, which the caller owns.
            let page = unsafe { &*p };
            if page.purged.get() {
                break;
            }
            if page.class.get() as usize == class {
                return Some(p);
            }
            p = page.next.get();
        }
        None
    }

    /// # Safety
    /// `p` is in this list.
    pub unsafe fn remove(&mut self, p: *mut Page) {
        // SAFETY: `p` and its neighbours are members of this list.
        unsafe {
            let (prev, next) = ((*p).prev.get(), (*p).next.get());
            if prev.is_null() {
                self.first = next;
            } else {
                (*prev).next.set(next);
            }
            if next.is_null() {
                self.last = prev;
            } else {
                (*next).prev.set(prev);
            }
            (*p).next.set(null_mut());
            (*p).prev.set(null_mut());
        }
    }
}

struct Pool {
    /// Free pages of each kind (indexed by `PageKind`), most recently freed
    /// first.
    lists: [PageList; 2],
    /// Pages on each of `lists`.
    free: [usize; 2],
    /// Wholly free segments of each kind (`used == 0`: all their pages on
    /// `lists`), dirty or purged.
    free_segments: [usize; 2],
    /// When the last decay sweep of the pool started (`monotonic_ns`):
    /// sweeps run at most every half decay time.
    last_sweep: u64,
}

// SAFETY: the pool's pages are reached only under the pool lock.
unsafe impl Send for Pool {}

static POOL: SpinLock<Pool> = SpinLock::new(Pool {
    lists: [PageList::new(); 2],
    free: [0; 2],
    free_segments: [0; 2],
    last_sweep: 0,
});

/// Pages owned by heaps or abandoned, for statistics.
pub static SMALL_PAGES_IN_USE: AtomicU64 = AtomicU64::new(0);
pub static MEDIUM_PAGES_IN_USE: AtomicU64 = AtomicU64::new(0);
/// Pages `page_alloc` handed out (ever), for statistics.
pub static PAGES_TAKEN: AtomicU64 = AtomicU64::new(0);

/// The kind of a segment's pages (from its header's mask).
///
/// # Safety
/// `seg` is a live segment.
pub unsafe fn kind_of_segment(seg: *mut Segment) -> PageKind {
    // SAFETY: the caller's contract; the mask never changes.
    if unsafe { (*seg).index_mask } == PageKind::Small.index_mask() {
        PageKind::Small
    } else {
        PageKind::Medium
    }
}

/// Calls `f` on every pooled page, under the pool lock (`f` must not
/// allocate or take the pool lock).
///
/// # Safety
/// For `residency` only: `f` reads the pages it is given.
pub unsafe fn for_each_pooled_page(f: &mut dyn FnMut(*mut Page)) {
    let pool = POOL.lock();
    for kind in PageKind::ALL {
        let mut p = pool.lists[kind as usize].first;
        while !p.is_null() {
            f(p);
            // SAFETY: a pooled page, under the pool lock.
            p = unsafe { (*p).next.get() };
        }
    }
}

/// Whether the pool holds a page of `kind` whose memory is still resident
/// (freed less than a decay time ago): taking one touches no new memory.
/// A hint (the pool may change as soon as its lock is released).
pub fn pool_has_dirty(kind: PageKind) -> bool {
    let pool = POOL.lock();
    let first = pool.lists[kind as usize].first;
    // SAFETY: a pooled page, read under the pool lock. Purged pages are
    // put back at the end: a purged first page means all are.
    !first.is_null() && !unsafe { (*first).purged.get() }
}

/// A page for `class`, initialised and owned by the caller, or null when
/// memory is exhausted. Never called with an allocator lock held (R1).
pub fn page_alloc(class: usize) -> *mut Page {
    let kind = PageKind::of_class(class);
    let taken = {
        let mut pool = POOL.lock();
        let pool = &mut *pool;
        let list = &mut pool.lists[kind as usize];
        // SAFETY: under the pool lock, which owns the list's pages (S1).
        let p = unsafe { list.dirty_of_class(class) }.unwrap_or(list.first);
        if !p.is_null() {
            // SAFETY: p is on a pool list (S1: the pool owns it).
            unsafe { list.remove(p) };
            pool.free[kind as usize] -= 1;
            // SAFETY: p's segment is a live segment (S3), its pages'
            // counts guarded by the pool lock.
            unsafe { count_out_of_pool(&mut pool.free_segments, p) };
        }
        p
    };
    let page = if taken.is_null() {
        match segment_new(kind) {
            Some(p) => p,
            None => return null_mut(),
        }
    } else {
        taken
    };
    // SAFETY: the page is now ours alone (S1).
    unsafe { (*page).init(class) };
    kind.in_use().fetch_add(1, Ordering::Relaxed);
    PAGES_TAKEN.fetch_add(1, Ordering::Relaxed);
    page
}

/// Creates a segment and returns one page of it, the rest going to the pool.
#[cold]
fn segment_new(kind: PageKind) -> Option<*mut Page> {
    let opts = RegionOptions::default()
        .granule(64 << 10)
        .align(SEGMENT_SIZE)
        .eager();
    let base = Region::reserve(SEGMENT_SIZE, opts).ok()?.into_raw();
    let seg = base as *mut Segment;
    // SAFETY: a fresh, committed, zeroed 4 MiB region that only we know:
    // writing its header is initialising our own metadata. An all-zero
    // Page is a valid empty descriptor.
    unsafe {
        ptr::addr_of_mut!((*seg).magic).write(MAGIC);
        ptr::addr_of_mut!((*seg).index_mask).write(kind.index_mask());
        (*seg).used.set(1);
        for (i, page) in (*seg).pages.iter().enumerate() {
            page.area.set(base.add(i * SMALL_PAGE_SIZE));
        }
    }
    // SAFETY: as above.
    let pages = unsafe { &(*seg).pages };
    let mut indices = kind.spans();
    let first = indices.next().expect("a segment has pages");
    let mut pool = POOL.lock();
    for i in indices {
        let page = &pages[i];
        page.freed_at.set(0);
        page.purged.set(true); // fresh memory reads as zero
                               // SAFETY: a new page, in no list.
        unsafe { pool.lists[kind as usize].push_back(page as *const Page as *mut Page) };
        pool.free[kind as usize] += 1;
    }
    Some(&pages[first] as *const Page as *mut Page)
}

/// Gives an empty page (`used == 0`, owned by the caller) back to the pool.
/// Returns a segment to destroy once no allocator lock is held (R1, S3).
///
/// # Safety
/// `page` is a page descriptor of a live segment, owned by the caller
/// (S1), with `used == 0` and no remote frees pending (S2), and in no list.
#[must_use]
pub unsafe fn page_free(page: *mut Page) -> Option<*mut Segment> {
    // SAFETY: the caller's contract.
    unsafe { page_free_with(page, true) }
}

/// `page_free`, but a pool decay sweep that falls due is left to the next
/// `maybe_decay`: for callers holding another heap's lock, which the
/// sweep's system calls would keep that heap's owner waiting on.
///
/// # Safety
/// As `page_free`.
#[must_use]
pub unsafe fn page_free_without_decay(page: *mut Page) -> Option<*mut Segment> {
    // SAFETY: the caller's contract.
    unsafe { page_free_with(page, false) }
}

/// # Safety
/// As `page_free`.
unsafe fn page_free_with(page: *mut Page, run_decay: bool) -> Option<*mut Segment> {
    // SAFETY: the caller's contract: the caller owns the page and it is
    // empty (S2).
    let p = unsafe { &*page };
    debug_assert_eq!(p.used.load(Ordering::Relaxed), 0, "S2");
    // No freer reads the page any more (S4). An abandoned page that
    // emptied keeps its tag until here; Relaxed: the pool lock publishes it.
    debug_assert!(
        matches!(p.thread_free.load(Ordering::Relaxed), 0 | ABANDONED),
        "S2: remote frees left in an empty page"
    );
    p.thread_free.store(0, Ordering::Relaxed);
    // Whatever a purge did before, this page now holds dirty memory.
    p.purged.set(false);
    p.heap.store(null_mut(), Ordering::Relaxed);
    p.free.set(null_mut());
    p.local_free.set(null_mut());
    p.kind().in_use().fetch_sub(1, Ordering::Relaxed);
    let now = spf_core::monotonic_ns();
    let decay = options::decay_ns();
    if decay == 0 {
        purge(p);
    }
    p.freed_at.set(now);
    let (doomed, due) = {
        let mut pool = POOL.lock();
        // SAFETY: the page is ours, empty and in no list.
        let doomed = unsafe { pool_put(&mut pool, page, End::Front) };
        let due = run_decay && decay > 0 && now.saturating_sub(pool.last_sweep) > decay / 2;
        if due {
            pool.last_sweep = now;
        }
        (doomed, due)
    };
    let decayed = if due { decay_pool(now, decay) } else { None };
    match (doomed, decayed) {
        (Some(seg), Some(other)) => {
            // SAFETY: `decay_pool` handed `other` to us to destroy, once.
            unsafe { defer_destroy(other) };
            Some(seg)
        }
        (doomed, decayed) => doomed.or(decayed),
    }
}

/// Which end of a pool list a page goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// Most recently freed first.
    Front,
    /// Back among the oldest (a page just purged).
    Back,
}

/// Puts a page into the pool and counts it out of its segment; returns the
/// segment if that made it wholly free, all its pages are purged or the
/// pool holds too many wholly free segments of its kind (S6), and the
/// pool keeps enough of its kind already: its pages are then off the
/// list, and the caller destroys it once no lock is held (R1, S3). With a
/// decay time that is a page put back purged by `decay_pool`; with none,
/// any page (`page_free` purges at once).
///
/// # Safety
/// The caller holds the pool lock (`pool`) and owns `page`, which is empty
/// and in no list, and counted in its segment's `used`.
unsafe fn pool_put(pool: &mut Pool, page: *mut Page, end: End) -> Option<*mut Segment> {
    // SAFETY: the caller's contract.
    let p = unsafe { &*page };
    let kind = p.kind();
    {
        let list = &mut pool.lists[kind as usize];
        // SAFETY: the page is ours and in no list.
        unsafe {
            match end {
                End::Front => list.push_front(page),
                End::Back => list.push_back(page),
            }
        }
    }
    let seg = p.segment();
    // SAFETY: the page's segment is live (S3); the count is guarded by the
    // pool lock.
    let used = unsafe {
        let used = (*seg).used.get() - 1;
        (*seg).used.set(used);
        used
    };
    let per_segment = kind.spans().count();
    let mut free = pool.free[kind as usize] + 1;
    let mut doomed = None;
    if used == 0 {
        pool.free_segments[kind as usize] += 1;
    }
    // S6: past the purged ones kept, a wholly free segment goes when its
    // memory has decayed, or at once when enough free segments are kept.
    let goes = used == 0
        && free > KEEP_SEGMENTS * per_segment
        && (pool.free_segments[kind as usize] > KEEP_FREE_SEGMENTS
            // SAFETY: the segment is live and, with `used == 0`, all its
            // pages are pooled: their `purged` flags are the pool lock's.
            || unsafe { all_purged(seg, kind) });
    if goes {
        pool.free_segments[kind as usize] -= 1;
        // SAFETY: all of this segment's pages are in the pool list.
        unsafe {
            let pages = &(*seg).pages;
            for i in kind.spans() {
                let q = &pages[i] as *const Page as *mut Page;
                pool.lists[kind as usize].remove(q);
            }
        }
        free -= per_segment;
        doomed = Some(seg);
    }
    pool.free[kind as usize] = free;
    doomed
}

/// Counts a page taken off a pool list (by `page_alloc`, or by the decay
/// to purge it) back into its segment's `used`, and its segment out of
/// `free_segments` if it was wholly free.
///
/// # Safety
/// The caller holds the pool lock (`free_segments` is the pool's) and has
/// just taken `page` off a pool list; its segment is live (S3).
unsafe fn count_out_of_pool(free_segments: &mut [usize; 2], page: *mut Page) {
    // The segment's kind, not the page's: a page never taken since its
    // segment was made has class 0, a small class, in a medium segment too.
    // SAFETY: the caller's contract.
    let seg = unsafe { (*page).segment() };
    // SAFETY: as above.
    let kind = unsafe { kind_of_segment(seg) };
    // SAFETY: as above; the count is guarded by the pool lock.
    let used = unsafe { (*seg).used.get() };
    if used == 0 {
        free_segments[kind as usize] -= 1;
    }
    // SAFETY: as above.
    unsafe { (*seg).used.set(used + 1) };
}

/// Whether every page of a wholly free segment is purged: its memory
/// decayed, so that destroying it discards no memory freed less than a
/// decay time ago (S6).
///
/// # Safety
/// `seg` is a live segment of `kind` whose pages are all pooled; the
/// caller holds the pool lock.
unsafe fn all_purged(seg: *mut Segment, kind: PageKind) -> bool {
    // SAFETY: the caller's contract.
    let pages = unsafe { &(*seg).pages };
    kind.spans().all(|i| pages[i].purged.get())
}

/// Runs a decay sweep if one is due; called from allocation slow paths so
/// that an active program sheds memory even when it frees no pages.
pub fn maybe_decay() {
    let decay = options::decay_ns();
    if decay == 0 {
        return;
    }
    let now = spf_core::monotonic_ns();
    {
        let mut pool = POOL.lock();
        if now.saturating_sub(pool.last_sweep) <= decay / 2 {
            return;
        }
        pool.last_sweep = now;
    }
    if let Some(seg) = decay_pool(now, decay) {
        // SAFETY: handed to us to destroy, once. R1: no allocator lock is
        // held here (under the fallback heap's lock, `segment_destroy`
        // queues it).
        unsafe { segment_destroy(seg) };
    }
}

/// Pages purged per round of `decay_pool`.
const PURGE_BATCH: usize = 16;

/// Purges pooled pages that have been free for `decay` or longer, with no
/// lock held across the system calls: each round takes up to
/// `PURGE_BATCH` such pages off the pool lists (counted in their segments'
/// `used`, as pages out of the pool are, so no segment of theirs can be
/// destroyed meanwhile: S3), purges them, and puts them back at the old
/// end. The lists are most-recent-first, so the oldest are at the tail.
///
/// Putting them back is what returns wholly free segments (their pages
/// all purged now) to spf-core. The first such segment is returned for
/// the caller to destroy where it holds no allocator lock; any others are
/// queued for the next `segment_destroy` (`page_free`'s callers may be in
/// the middle of walking a heap, which destroying could re-enter: R2).
#[must_use]
fn decay_pool(now: u64, decay: u64) -> Option<*mut Segment> {
    let mut first_doomed = None;
    loop {
        let mut batch = [null_mut::<Page>(); PURGE_BATCH];
        let mut n = 0;
        {
            let mut pool = POOL.lock();
            let Pool {
                lists,
                free,
                free_segments,
                ..
            } = &mut *pool;
            for kind in PageKind::ALL {
                let list = &mut lists[kind as usize];
                let mut p = list.last;
                let mut taken = 0;
                while !p.is_null() && n < PURGE_BATCH {
                    // SAFETY: a pooled page, under the pool lock.
                    let page = unsafe { &*p };
                    let prev = page.prev.get();
                    let freed_at = page.freed_at.get();
                    if freed_at > now || now - freed_at < decay {
                        break;
                    }
                    if !page.purged.get() {
                        // SAFETY: the page is on this list; its segment is
                        // live (S3) and its count guarded by the lock.
                        unsafe {
                            list.remove(p);
                            count_out_of_pool(free_segments, p);
                        }
                        batch[n] = p;
                        n += 1;
                        taken += 1;
                    }
                    p = prev;
                }
                free[kind as usize] -= taken;
            }
        }
        if n == 0 {
            return first_doomed;
        }
        let mut failed = false;
        for &p in &batch[..n] {
            // SAFETY: taken off the pool above: ours alone until put back.
            let page = unsafe { &*p };
            purge(page);
            failed |= !page.purged.get();
        }
        let mut doomed = [null_mut::<Segment>(); PURGE_BATCH];
        let mut d = 0;
        {
            let mut pool = POOL.lock();
            for &p in &batch[..n] {
                // SAFETY: ours, empty, in no list, counted in its segment.
                if let Some(seg) = unsafe { pool_put(&mut pool, p, End::Back) } {
                    doomed[d] = seg;
                    d += 1;
                }
            }
        }
        for &seg in &doomed[..d] {
            if first_doomed.is_none() {
                first_doomed = Some(seg);
            } else {
                // SAFETY: `pool_put` took this segment's pages off the
                // lists and handed it to us to destroy, once.
                unsafe { defer_destroy(seg) };
            }
        }
        // A page whose purge failed is still due: the next sweep retries
        // it, this one must not take it again and again.
        if n < PURGE_BATCH || failed {
            return first_doomed;
        }
    }
}

/// Purges every page pooled by now, whatever its age (pages freed while it
/// runs are left to decay, so that a stream of frees cannot keep it going).
pub fn purge_all() {
    if let Some(seg) = decay_pool(spf_core::monotonic_ns(), 0) {
        // SAFETY: handed to us to destroy, once; `spf::purge()` holds no
        // allocator lock (R1).
        unsafe { segment_destroy(seg) };
    }
}

fn purge(page: &Page) {
    let len = page.bytes();
    // SAFETY: the page is free (S2): nothing in it will be read again, and
    // it lies inside its live segment.
    if unsafe { spf_core::purge_pages(page.area.get(), len) }.is_ok() {
        page.purged.set(true);
    }
}

thread_local! {
    /// Set while this thread holds the fallback heap's lock.
    static DEFERRING: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread holds the fallback heap's lock.
pub fn deferring() -> bool {
    DEFERRING.with(Cell::get)
}

/// Segments whose destruction was deferred, linked through their first
/// page's `next` (a Treiber stack; popped only all at once).
static DEFERRED: AtomicPtr<Segment> = AtomicPtr::new(null_mut());

/// While alive, `segment_destroy` on this thread only queues segments.
pub struct DeferDestroy(());

impl DeferDestroy {
    pub fn enter() -> DeferDestroy {
        DEFERRING.with(|d| d.set(true));
        DeferDestroy(())
    }
}

impl Drop for DeferDestroy {
    fn drop(&mut self) {
        DEFERRING.with(|d| d.set(false));
    }
}

/// Returns a segment whose pages were all taken out of the pool to spf-core.
/// Called with no allocator lock held (R1): destroying pins an epoch, which
/// may allocate. Under the fallback lock, the segment is queued instead and
/// destroyed by the next `segment_destroy` elsewhere.
///
/// # Safety
/// `seg` is a segment that `page_free` (or the pool's decay) returned to
/// be destroyed — made by `segment_new`, all its pages taken off the pool
/// lists — and it is destroyed once.
pub unsafe fn segment_destroy(seg: *mut Segment) {
    // SAFETY: the caller's contract: the segment was created by
    // `segment_new` through `Region::into_raw`, and all its pages were
    // taken out of the pool, so this is the only handle.
    debug_assert_eq!(unsafe { (*seg).magic }, MAGIC);
    if DEFERRING.with(Cell::get) {
        // SAFETY: as above.
        unsafe { defer_destroy(seg) };
        return;
    }
    // SAFETY: as above.
    drop(unsafe { Region::from_raw(seg as *mut u8) });
    let mut queued = DEFERRED.swap(null_mut(), Ordering::Acquire);
    while !queued.is_null() {
        // SAFETY: queued segments are ours alone, linked as above.
        let next = unsafe { (*queued).pages[0].next.get() } as *mut Segment;
        // SAFETY: as for `seg`.
        drop(unsafe { Region::from_raw(queued as *mut u8) });
        queued = next;
    }
}

/// Queues a segment (all its pages off the pool lists, ours alone) for the
/// next `segment_destroy` on any thread.
///
/// # Safety
/// As `segment_destroy`: `seg` is a wholly free segment taken off the
/// pool lists, queued once.
unsafe fn defer_destroy(seg: *mut Segment) {
    let mut head = DEFERRED.load(Ordering::Relaxed);
    loop {
        // SAFETY: the caller's contract: we own the segment; its first
        // page (the header's) is unused.
        unsafe { (*seg).pages[0].next.set(head as *mut Page) };
        // Release pairs with the Acquire swap in `segment_destroy`: the
        // link is written before the segment is seen.
        match DEFERRED.compare_exchange_weak(head, seg, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return,
            Err(h) => head = h,
        }
    }
}

/// Locks for `fork()` (see `thread`).
pub fn fork_lock() {
    POOL.lock_forever();
}

/// # Safety
/// After `fork_lock`.
pub unsafe fn fork_unlock() {
    // SAFETY: the caller's contract.
    unsafe { POOL.unlock_forgotten() };
}
