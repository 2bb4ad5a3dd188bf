//! Large blocks: requests above 256 KiB, or aligned beyond 64 KiB. Each is
//! its own spf-core region with 64 KiB granules.
//!
//! By default a large block is committed when allocated, because memory
//! that `alloc` returns must work with system calls: the kernel answers a
//! `read()` into an untouched `PROT_NONE` page with `EFAULT`, not a signal.
//! In touch mode (`SPF_COMMIT=touch`, or `SpfAlloc::lazy()`) it is committed
//! on first touch by the speculative fault path, with 1 MiB of commit-ahead.
//!
//! An eager block of 2 MiB or more (`HUGE_MIN`) made fresh or grown in
//! place is 2 MiB-aligned and advised `MADV_HUGEPAGE` (unless
//! `SPF_THP=off`): where the kernel's THP setting allows, each whole 2 MiB
//! of it faults in as one huge page, a fault per 2 MiB instead of per
//! 4 KiB. The region keeps its 64 KiB granule, so L1, `split_off`, `merge`
//! and in-place resizing work as before (the kernel splits a huge page that
//! a split, shrink or purge cuts). A range leaving large blocks (destroyed,
//! or a decommitted tail) is advised `MADV_NOHUGEPAGE` first: spf-core may
//! reuse it for a segment, whose 64 KiB pages must not fault in 2 MiB at a
//! time.
//!
//! Freed blocks go to a cache that keeps their address space and, for the
//! decay time (`SPF_DECAY_MS`, like jemalloc's `dirty_decay_ms`), their
//! pages: a hot alloc/touch/free loop reuses a committed, resident block and
//! takes no fault at all. Past the decay time a cached block is purged
//! (`MADV_DONTNEED`: still committed, no longer resident, reads as zero);
//! past the cache's size limits the oldest blocks go back to spf-core.
//! Ages are read on the decay clock (`decay`), which does not count idle
//! stretches past 100 ms: a block freed before the program paused is not
//! purged by the first free after the pause, just as the program comes
//! back to reuse it, but after the decay time of activity.
//!
//! A request takes the cached block that holds it, up to four times its
//! size (`FIT_MAX_RATIO`), whose resident pages cover most of it — the
//! smallest among equals: the block's region is split at the
//! request (L1), and its tail is cached as a block of its own with its
//! pages kept, so the head's resident pages serve the request without a
//! fault and the tail's serve a later one (a tail smaller than any large
//! request merges back with the head when that is freed; on the mixed
//! torture workload, giving such tails back instead cost 700 `mprotect`s
//! and 1,400 `madvise`s a repetition and a third of its time). A block
//! that `realloc` shrinks keeps only a tail a large request could use: a
//! smaller one is given back, so that the block can grow into its range
//! again in place. A block freed
//! next to cached blocks (its own split-off tail, or a region carved beside
//! it) merges with them into one block, so freed neighbours serve a larger
//! request in place instead of a new region faulted in page by page (on
//! the mixed torture workload this halved the page faults). A request no
//! cached block holds grows the largest
//! dirty cached block of at least a quarter of its size in place, when the
//! address space after it is free (a shrunk tail's range comes back free
//! after its grace period), so that block's resident pages serve the head.
//! A block that `realloc` moves takes only a near fit (`Fit::Near`): it is
//! likely to grow again, which a shrunk block could not do in place.
//! Reusing only near-equal sizes everywhere left most freed blocks idle in
//! the cache while new regions were made and faulted in beside them.
//! Resident (dirty) cached bytes are capped: live large blocks and dirty
//! cached ones hold at most 256 MiB together (`LARGE_RESIDENT_BUDGET`),
//! the cache keeping at least 64 MiB (`DIRTY_MIN_BYTES`). Past the cap the
//! bytes over it are purged at once instead of after the decay time, from
//! the end of the oldest dirty block (from a 2 MiB boundary; the block
//! stays whole) — when a block is freed, when one is allocated, and when
//! `realloc` resizes one in place — so the cache bounds
//! resident memory as well as address space, and yields it to live blocks
//! when those peak (on the mixed torture, 14 cold runs: a fixed 256 MiB
//! cap gave a peak of 406 MiB median, 443 at worst; the budget 383 and
//! 412, at the same wall time, with 82k page faults against 79k). Each
//! cached block keeps the range of it that may be resident (C1), so that a
//! freed block merged with a purged neighbour does not count the neighbour
//! dirty again, and a request takes the block whose resident pages cover
//! most of it before a smaller purged one. Purging whole blocks, with
//! merged blocks counted dirty whole, purged 0.9–1.2 GiB a repetition of
//! the mixed torture (warm, in runs where the cap bound) under a cap of
//! 64–256 MiB; the requests that took those blocks again faulted them in
//! as 2 MiB pages, and the kernel zeroing them took 37 % of the process's
//! cycles.
//!
//! `realloc` resizes in place where it can: it grows into free address
//! space after the block or into the cached block there (a tail split off
//! it, or a neighbour freed since), and a shrink caches the tail like a
//! freed block.
//!
//! Across `fork`, dirty cached blocks are marked `MADV_WIPEONFORK` (the
//! fork handlers hold the cache lock throughout): the child gets them as
//! zero pages, and the parent's pages are not shared with it, so reusing a
//! cached block after a fork takes no copy-on-write fault per page.
//!
//! Invariants:
//! - L1: a live large block's region is exactly `round(layout.size())`
//!   long: allocation, reuse and `realloc` keep it so, and `dealloc` relies
//!   on it.
//! - L2: a cached block is reachable only through the cache; taking it out
//!   (under the lock) gives the taker sole ownership — purging happens on
//!   blocks taken out, never on listed ones.
//! - C1: a cached block's pages outside its `dirty` range are not
//!   resident, and the range lies inside the block; the cache's
//!   `dirty_bytes` is the sum of the listed blocks' range lengths, and the
//!   cap applies to it. (One exception the allocator does not cause: with
//!   THP, `khugepaged` may collapse a 2 MiB range that straddles a range's
//!   end, making up to 2 MiB beyond it resident.)

use crate::lock::SpinLock;
use crate::options;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use spf_core::{Region, RegionOptions};

pub const GRANULE: usize = 64 << 10;
const COMMIT_AHEAD: usize = 1 << 20;
const CACHE_ENTRIES: usize = 64;
const CACHE_MAX_BYTES: usize = 1 << 30;
/// Resident bytes that live large blocks and dirty (unpurged) cached ones
/// may hold together: the cache yields its dirty bytes to live blocks, so
/// that a program whose large blocks peak holds less idle memory at that
/// peak. Enough for a few of the largest blocks a program cycles through,
/// so hot reuse stays fault-free. Live blocks count at their length, even
/// lazy ones not yet touched (their resident bytes are not tracked): a
/// program holding 192 MiB or more of large blocks, however sparse, leaves
/// the cache `DIRTY_MIN_BYTES`, and a larger block it frees and takes
/// again is purged in between and faults in again.
const LARGE_RESIDENT_BUDGET: usize = 256 << 20;
/// Dirty bytes the cache may keep whatever the live blocks hold.
const DIRTY_MIN_BYTES: usize = 64 << 20;

/// How many dirty bytes the cache may hold now: what the budget leaves
/// beside the live large blocks, and at least `DIRTY_MIN_BYTES`.
fn dirty_cap() -> usize {
    let live = LIVE_BYTES.load(Relaxed) as usize;
    LARGE_RESIDENT_BUDGET
        .saturating_sub(live)
        .max(DIRTY_MIN_BYTES)
}
/// A cached block serves requests down to a quarter of its size. Without a
/// bound a hot block of a growing buffer (a 64 MiB vector freed and grown
/// again from 512 KiB) was shrunk for the first small request, its tail
/// dropped, and every later step moved instead of growing in place
/// (realloc growth to 64 MiB: 2.4 ms → 14 ms). On the mixed torture, 4
/// took as few faults as no bound and fewer than 2 (jemalloc's
/// `lg_extent_max_active_fit` is the same idea, at 64).
const FIT_MAX_RATIO: usize = 4;
/// Eager blocks this large or larger are 2 MiB-aligned and advised
/// `MADV_HUGEPAGE` (unless `SPF_THP=off`).
pub const HUGE_MIN: usize = 2 << 20;
const HUGE_PAGE: usize = 2 << 20;

#[derive(Clone, Copy)]
struct Cached {
    ptr: usize,
    len: usize,
    /// When it was freed, on the decay clock (`decay::now`).
    freed_at: u64,
    /// The range of it whose pages may be resident (C1).
    dirty: Dirty,
    lazy: bool,
}

/// The part of a cached block whose pages may be resident: `[start, end)`
/// (addresses), the whole block when freed, empty once purged. Parts
/// merged keep their ranges, joined into one: the purged bytes between
/// two dirty ranges are counted too, an overestimate that the cap errs on
/// the side of. A range, not a count, so that a request is served from
/// the part it covers and a purge takes exactly the bytes it names.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Dirty {
    start: usize,
    end: usize,
}

impl Dirty {
    const NONE: Dirty = Dirty { start: 0, end: 0 };

    fn whole(ptr: usize, len: usize) -> Dirty {
        Dirty {
            start: ptr,
            end: ptr + len,
        }
    }

    fn len(self) -> usize {
        self.end - self.start
    }

    fn is_empty(self) -> bool {
        self.start == self.end
    }

    /// One range holding both (for two blocks merged).
    fn join(self, other: Dirty) -> Dirty {
        if self.is_empty() {
            other
        } else if other.is_empty() {
            self
        } else {
            Dirty {
                start: self.start.min(other.start),
                end: self.end.max(other.end),
            }
        }
    }

    /// Its part within `[start, end)`.
    fn within(self, start: usize, end: usize) -> Dirty {
        let (s, e) = (self.start.max(start), self.end.min(end));
        if s < e {
            Dirty { start: s, end: e }
        } else {
            Dirty::NONE
        }
    }
}

impl Cached {
    fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The part `[ptr, ptr + len)` of this block, split off it.
    fn part(&self, ptr: usize, len: usize) -> Cached {
        Cached {
            ptr,
            len,
            dirty: self.dirty.within(ptr, ptr + len),
            ..*self
        }
    }

    /// The dirty part of its first `len` bytes: what a request of `len`
    /// bytes taking it finds resident.
    fn dirty_head(&self, len: usize) -> Dirty {
        self.dirty.within(self.ptr, self.ptr + len)
    }
}

const EMPTY: Cached = Cached {
    ptr: 0,
    len: 0,
    freed_at: 0,
    dirty: Dirty::NONE,
    lazy: false,
};

struct Cache {
    entries: [Cached; CACHE_ENTRIES],
    n: usize,
    /// Bytes of all listed blocks.
    bytes: usize,
    /// The sum of listed blocks' dirty ranges: at least their resident
    /// bytes (C1).
    dirty_bytes: usize,
}

static CACHE: SpinLock<Cache> = SpinLock::new(Cache {
    entries: [EMPTY; CACHE_ENTRIES],
    n: 0,
    bytes: 0,
    dirty_bytes: 0,
});

pub static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);
pub static LIVE_BLOCKS: AtomicU64 = AtomicU64::new(0);
pub static CACHED_BYTES: AtomicU64 = AtomicU64::new(0);
/// Large allocations served from the cache (any fit).
pub static REUSED: AtomicU64 = AtomicU64::new(0);
/// Of those, served by shrinking a larger cached block in place.
pub static REUSED_SHRUNK: AtomicU64 = AtomicU64::new(0);
/// `realloc`s grown in place by taking in the cached block after them.
pub static REALLOC_INTO_CACHED: AtomicU64 = AtomicU64::new(0);
/// Cached blocks merged with a block freed next to them.
pub static MERGED: AtomicU64 = AtomicU64::new(0);
/// Tails of shrunk cached blocks split off and cached as blocks of their own.
pub static SPLIT_TAILS: AtomicU64 = AtomicU64::new(0);
/// Of `REUSED`, served by growing a smaller cached block in place.
pub static REUSED_GROWN: AtomicU64 = AtomicU64::new(0);
/// Purges because dirty cached bytes passed the cap (each of a block's
/// dirty range, or the end of it).
pub static PURGED_OVER_CAP: AtomicU64 = AtomicU64::new(0);

/// The region length of a large block of `size` bytes (L1).
pub fn round(size: usize) -> Option<usize> {
    size.max(1).checked_next_multiple_of(GRANULE)
}

impl Cache {
    /// Adds a block if the limits allow; false if it must be destroyed.
    fn insert(&mut self, c: Cached) -> bool {
        if self.n == CACHE_ENTRIES || self.bytes + c.len > CACHE_MAX_BYTES {
            return false;
        }
        debug_assert!(
            c.dirty.is_empty() || (c.dirty.start >= c.ptr && c.dirty.end <= c.ptr + c.len),
            "C1: a dirty range outside its block"
        );
        self.entries[self.n] = c;
        self.n += 1;
        self.bytes += c.len;
        self.dirty_bytes += c.dirty.len();
        debug_assert_eq!(
            self.dirty_bytes,
            self.entries[..self.n]
                .iter()
                .map(|e| e.dirty.len())
                .sum::<usize>(),
            "C1: dirty_bytes is the sum of the listed blocks' dirty ranges"
        );
        CACHED_BYTES.store(self.bytes as u64, Relaxed);
        true
    }

    fn remove(&mut self, i: usize) -> Cached {
        let c = self.entries[i];
        self.n -= 1;
        self.entries[i] = self.entries[self.n];
        self.bytes -= c.len;
        self.dirty_bytes -= c.dirty.len();
        CACHED_BYTES.store(self.bytes as u64, Relaxed);
        c
    }

    /// A dirty block past its decay time.
    fn decayed(&self, now: u64, decay: u64) -> Option<usize> {
        (0..self.n).find(|&i| {
            let e = &self.entries[i];
            e.is_dirty() && now.saturating_sub(e.freed_at) >= decay
        })
    }
}

/// How much larger than the request a cached block may be.
#[derive(Clone, Copy)]
enum Fit {
    /// Up to `FIT_MAX_RATIO` times: a new block.
    Shrink,
    /// Up to 25 % larger: the new home of a block that `realloc` grows.
    /// A growing buffer will likely grow again; a larger block shrunk for it
    /// could not grow back in place (its tail's range waits out a grace
    /// period), so every later step would move and copy.
    Near,
}

/// The cached block of `len` bytes or more that `fit` allows, with the
/// right alignment and commit mode, whose dirty range covers most of the
/// request's bytes (taking a larger dirty block leaves its tail dirty in
/// the cache, while a purged block faults in again), the smallest among
/// equals.
fn take_cached(len: usize, align: usize, lazy: bool, zeroed: bool, fit: Fit) -> Option<Cached> {
    let max_len = match fit {
        Fit::Shrink => len.saturating_mul(FIT_MAX_RATIO),
        Fit::Near => len.saturating_add(len / 4),
    };
    let mut cache = CACHE.lock();
    let mut best: Option<usize> = None;
    for i in 0..cache.n {
        let c = &cache.entries[i];
        let fits = c.len >= len && c.len <= max_len && c.ptr % align == 0 && c.lazy == lazy;
        // A dirty lazy block would need zeroing by touch, committing it all.
        let ok = fits && !(zeroed && lazy && c.is_dirty());
        let covered = c.dirty_head(len).len();
        let better = |b: &Cached| (b.dirty_head(len).len(), c.len) < (covered, b.len);
        if ok && best.is_none_or(|b| better(&cache.entries[b])) {
            best = Some(i);
            if c.len == len && covered == len {
                break;
            }
        }
    }
    best.map(|i| cache.remove(i))
}

/// Writes zeros over `d`.
///
/// # Safety
/// `d` lies in a committed block the caller holds alone.
unsafe fn zero(d: Dirty) {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::write_bytes(d.start as *mut u8, 0, d.len()) };
}

/// For a request no cached block holds: the largest dirty cached block of
/// a quarter of `len` or more, grown in place to `len` if the address space
/// after it is free, so its resident pages serve the head of the request.
/// The block goes back to the cache if it cannot grow.
fn grow_cached(len: usize, align: usize, lazy: bool, zeroed: bool) -> Option<usize> {
    let c = {
        let mut cache = CACHE.lock();
        let mut best: Option<usize> = None;
        for i in 0..cache.n {
            let c = &cache.entries[i];
            // A dirty lazy block would need zeroing by touch, committing it.
            let ok = c.is_dirty()
                && c.len < len
                && c.len >= len / FIT_MAX_RATIO
                && c.ptr % align == 0
                && c.lazy == lazy
                && !(zeroed && lazy);
            if ok && best.is_none_or(|b| cache.entries[b].len < c.len) {
                best = Some(i);
            }
        }
        cache.remove(best?)
    };
    // SAFETY: taken out of the cache: the only handle (L2).
    let mut r = unsafe { Region::from_raw(c.ptr as *mut u8) }?;
    if r.grow(len).is_ok() {
        if wants_huge(len, lazy) {
            advise_huge(c.ptr, len);
        }
        r.into_raw();
        REUSED.fetch_add(1, Relaxed);
        REUSED_GROWN.fetch_add(1, Relaxed);
        if zeroed {
            // SAFETY: inside a committed block we hold alone; the grown
            // part is fresh and the rest purged: both read as zero.
            unsafe { zero(c.dirty) };
        }
        return Some(c.ptr);
    }
    // L1 for the cached length: a failed eager grow may have grown it lazily.
    if r.len() != c.len {
        r.shrink(c.len);
    }
    r.into_raw();
    if !CACHE.lock().insert(c) {
        destroy(&c);
    }
    None
}

/// Which tails of a shrunk block are kept (cached) rather than given back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tails {
    /// Every tail: the head is a cached block taken for a new request,
    /// which is not expected to grow again in place.
    All,
    /// Tails a large request could use (`MIN_TAIL` and up); a smaller one
    /// is given back, so that its range is free address space again after
    /// a grace period and the block (shrunk by `realloc`, or grown into a
    /// neighbour) can grow into it in place. A small kept tail would stand
    /// there, too short for `grow_into_next`.
    Usable,
}

/// The smallest tail `Tails::Usable` keeps: the smallest large block (a
/// 256 KiB + 1 B request rounds to it).
const MIN_TAIL: usize = (256 << 10) + GRANULE;

/// Shrinks block `r` to `len` (L1). A tail that `keep` keeps is split off
/// and cached as a block of its own (merged with a cached block after it),
/// with `like`'s age, state and commit mode, its pages kept: a tail a large
/// request can use serves one without a fault, and any tail merges back
/// with the block when that is freed, so the block returns whole.
/// Splitting costs no system call; giving the tail back costs an
/// `mprotect` (a TLB shootdown on every CPU the process runs on) and two
/// `madvise`s under the space lock. A tail that finds no descriptor is
/// given back too.
fn shrink_keeping_tail(r: &mut Region, len: usize, like: &Cached, keep: Tails) {
    let tail_len = r.len() - len;
    if keep == Tails::All || tail_len >= MIN_TAIL {
        if let Ok(tail) = r.split_off(len) {
            SPLIT_TAILS.fetch_add(1, Relaxed);
            let mut tail = like.part(tail.into_raw() as usize, tail_len);
            coalesce(&mut tail);
            // Past the cache's limits the tail is destroyed (R1: no lock).
            if tail.len > CACHE_MAX_BYTES || !CACHE.lock().insert(tail) {
                destroy(&tail);
            }
            return;
        }
    }
    // The tail is decommitted: its pages leave now.
    unadvise_huge(r.as_ptr() as usize + len, tail_len, like.lazy);
    r.shrink(len);
}

/// Grows block `r` in place to `new_len` by merging it with the cached
/// block that starts where it ends, if that one is long enough (a tail
/// split off it, or a neighbour freed since); what is left past `new_len`
/// stays cached. False, and `r` unchanged, otherwise.
fn grow_into_next(r: &mut Region, new_len: usize, lazy: bool) -> bool {
    let end = r.as_ptr() as usize + r.len();
    let need = new_len - r.len();
    let next = {
        let mut cache = CACHE.lock();
        (0..cache.n)
            .find(|&i| {
                let c = &cache.entries[i];
                c.ptr == end && c.lazy == lazy && c.len >= need
            })
            .map(|i| cache.remove(i))
    };
    let Some(n) = next else {
        return false;
    };
    // SAFETY: taken out of the cache: the only handle (L2).
    let Some(next) = (unsafe { Region::from_raw(n.ptr as *mut u8) }) else {
        put_back([Some(n), None]);
        return false;
    };
    if let Err((next, _)) = r.merge(next) {
        next.into_raw();
        put_back([Some(n), None]);
        return false;
    }
    if r.len() > new_len {
        shrink_keeping_tail(r, new_len, &n, Tails::Usable);
    }
    true
}

/// Allocates a large block. Null when the reservation or commit fails.
pub fn alloc(size: usize, align: usize, lazy: bool, zeroed: bool) -> *mut u8 {
    alloc_fit(size, align, lazy, zeroed, Fit::Shrink)
}

fn alloc_fit(size: usize, align: usize, lazy: bool, zeroed: bool, fit: Fit) -> *mut u8 {
    let Some(len) = round(size) else {
        return null_mut();
    };
    let align = align.max(GRANULE);
    let cached = take_cached(len, align, lazy, zeroed, fit);
    let ptr = match cached {
        Some(c) => {
            REUSED.fetch_add(1, Relaxed);
            if c.len > len {
                REUSED_SHRUNK.fetch_add(1, Relaxed);
                // SAFETY: the cache gave us the only handle (L2).
                if let Some(mut r) = unsafe { Region::from_raw(c.ptr as *mut u8) } {
                    shrink_keeping_tail(&mut r, len, &c, Tails::All);
                    r.into_raw();
                }
            }
            if zeroed {
                // SAFETY: inside a committed block of at least `size` bytes,
                // ours; its purged pages read as zero.
                unsafe { zero(c.dirty_head(size)) };
            }
            c.ptr as *mut u8
        }
        None => match grow_cached(len, align, lazy, zeroed) {
            Some(p) => p as *mut u8,
            None => {
                let huge = wants_huge(len, lazy);
                // 2 MiB-aligned, so that every whole 2 MiB of the block
                // can be one huge page.
                let align = if huge { align.max(HUGE_PAGE) } else { align };
                let opts = RegionOptions::default().granule(GRANULE).align(align);
                let opts = if lazy {
                    opts.commit_ahead(COMMIT_AHEAD)
                } else {
                    opts.eager()
                };
                match Region::reserve(len, opts) {
                    Ok(r) => {
                        if huge {
                            advise_huge(r.as_ptr() as usize, len);
                        }
                        r.into_raw()
                    }
                    Err(_) => return null_mut(),
                }
            }
        },
    };
    if lazy {
        // The block faults in on touch: spf's handler must be in front of
        // any the program installed since, and neither a cached block nor a
        // region made within the core's 10 ms check interval saw to it.
        spf_core::ensure_fault_handler();
    }
    LIVE_BYTES.fetch_add(len as u64, Relaxed);
    LIVE_BLOCKS.fetch_add(1, Relaxed);
    // Live bytes grew: the cap shrank, by more than the dirty bytes of a
    // cached block taken, if it was not all dirty.
    purge_over_cap();
    ptr
}

/// Frees a large block into the cache. Called with no allocator lock held
/// (R1): evicting destroys regions.
pub fn dealloc(ptr: *mut u8, size: usize, lazy: bool) {
    let len = round(size).expect("a live block's size rounds");
    check_live(ptr, len);
    LIVE_BYTES.fetch_sub(len as u64, Relaxed);
    LIVE_BLOCKS.fetch_sub(1, Relaxed);
    let now = crate::decay::now();
    let decay = options::decay_ns();
    let mut entry = Cached {
        ptr: ptr as usize,
        len,
        freed_at: now,
        dirty: Dirty::whole(ptr as usize, len),
        lazy,
    };
    coalesce(&mut entry);
    if entry.len > CACHE_MAX_BYTES {
        destroy(&entry); // never cached: keep the others
        return;
    }
    if decay == 0 {
        purge(&mut entry);
    }
    // Blocks to destroy or purge once the lock is released (R1, L2).
    let mut evicted = [EMPTY; 16];
    let mut n_evicted = 0;
    let mut stale = [EMPTY; 8];
    let mut n_stale = 0;
    {
        let mut cache = CACHE.lock();
        while (cache.n == CACHE_ENTRIES || cache.bytes + entry.len > CACHE_MAX_BYTES)
            && cache.n > 0
            && n_evicted < 4
        {
            let oldest = (0..cache.n)
                .min_by_key(|&i| cache.entries[i].freed_at)
                .expect("n > 0");
            evicted[n_evicted] = cache.remove(oldest);
            n_evicted += 1;
        }
        if !cache.insert(entry) {
            evicted[n_evicted] = entry;
            n_evicted += 1;
        }
        while n_stale < stale.len() {
            let Some(i) = cache.decayed(now, decay) else {
                break;
            };
            stale[n_stale] = cache.remove(i);
            n_stale += 1;
        }
    }
    for c in &mut stale[..n_stale] {
        purge(c);
    }
    if n_stale > 0 {
        let mut cache = CACHE.lock();
        for c in &stale[..n_stale] {
            if !cache.insert(*c) {
                evicted[n_evicted] = *c;
                n_evicted += 1;
            }
        }
    }
    for c in &evicted[..n_evicted] {
        destroy(c);
    }
    purge_over_cap();
}

/// Merges a block being freed with the cached blocks just before and just
/// after it (same commit mode), so that freed neighbours — a block and the
/// tail split off it, or regions carved side by side — become one block
/// that a larger request can use, resident pages and all. The neighbours
/// are taken out of the cache under its lock and merged without it (R1:
/// merging takes the space lock); one that cannot merge goes back.
fn coalesce(entry: &mut Cached) {
    if CACHED_BYTES.load(Relaxed) == 0 {
        return;
    }
    let (prev, next) = {
        let mut cache = CACHE.lock();
        let adjacent = |cache: &Cache, at: &dyn Fn(&Cached) -> bool| {
            (0..cache.n).find(|&i| cache.entries[i].lazy == entry.lazy && at(&cache.entries[i]))
        };
        let end = entry.ptr + entry.len;
        let next = adjacent(&cache, &|c| c.ptr == end).map(|i| cache.remove(i));
        let prev = adjacent(&cache, &|c| c.ptr + c.len == entry.ptr).map(|i| cache.remove(i));
        (prev, next)
    };
    if prev.is_none() && next.is_none() {
        return;
    }
    let mut back = [next, prev];
    // SAFETY: the block being freed: its caller's handle, now ours.
    let Some(mut block) = (unsafe { Region::from_raw(entry.ptr as *mut u8) }) else {
        put_back(back);
        return;
    };
    back = [None; 2];
    if let Some(n) = next {
        // SAFETY: taken out of the cache: the only handle (L2).
        match unsafe { Region::from_raw(n.ptr as *mut u8) }.map(|r| block.merge(r)) {
            Some(Ok(())) => absorb(entry, &n),
            Some(Err((r, _))) => {
                r.into_raw();
                back[0] = Some(n);
            }
            None => back[0] = Some(n),
        }
    }
    if let Some(p) = prev {
        // SAFETY: as above.
        match unsafe { Region::from_raw(p.ptr as *mut u8) } {
            Some(mut r) => match r.merge(block) {
                Ok(()) => {
                    entry.ptr = p.ptr;
                    absorb(entry, &p);
                    block = r;
                }
                Err((b, _)) => {
                    r.into_raw();
                    block = b;
                    back[1] = Some(p);
                }
            },
            None => back[1] = Some(p),
        }
    }
    block.into_raw();
    MERGED.fetch_add(
        u64::from(prev.is_some() && back[1].is_none())
            + u64::from(next.is_some() && back[0].is_none()),
        Relaxed,
    );
    put_back(back);
}

/// Returns blocks taken out of the cache that could not merge.
fn put_back(blocks: [Option<Cached>; 2]) {
    for c in blocks.into_iter().flatten() {
        if !CACHE.lock().insert(c) {
            destroy(&c);
        }
    }
}

/// `entry` took in the cached block `c` (L1: the lengths add up, as the
/// regions did); its dirty range spans both parts' (C1).
fn absorb(entry: &mut Cached, c: &Cached) {
    entry.len += c.len;
    entry.dirty = entry.dirty.join(c.dirty);
}

/// Purges cached blocks past their decay time; called from allocation slow
/// paths, so an active program sheds them even when it frees no large block.
pub fn maybe_decay() {
    let decay = options::decay_ns();
    let now = crate::decay::now();
    if decay == 0 || CACHED_BYTES.load(Relaxed) == 0 {
        return;
    }
    loop {
        let mut c = {
            let mut cache = CACHE.lock();
            match cache.decayed(now, decay) {
                Some(i) => cache.remove(i),
                None => return,
            }
        };
        purge(&mut c); // taken out: ours alone (L2)
                       // A block that could not be purged waits another decay period
                       // (and this loop does not pick it up again).
        c.freed_at = now;
        if !CACHE.lock().insert(c) {
            destroy(&c);
        }
    }
}

/// A large block being freed must be a live region starting at `ptr` and
/// not already in the cache: otherwise this is a double free or a free of a
/// pointer spf never gave out, and handing the block out twice would
/// corrupt memory silently. The checks cost a lock-free map lookup and a
/// scan of at most 64 cache entries, next to a free that costs far more.
fn check_live(ptr: *mut u8, len: usize) {
    let live = spf_core::region_at(ptr).is_some_and(|r| r.start == ptr as usize && r.len == len);
    if is_cached(ptr) {
        crate::misuse::report(ptr, "double free of a large block (it is already free)");
    }
    if !live {
        crate::misuse::report(ptr, "free of a pointer that is not a live large block from spf (double free, a foreign pointer, or a wrong Layout)");
    }
}

/// Whether `ptr` is a freed large block waiting in the cache (a scan of at
/// most 64 entries under the cache lock).
pub fn is_cached(ptr: *const u8) -> bool {
    let cache = CACHE.lock();
    cache.entries[..cache.n]
        .iter()
        .any(|c| c.ptr == ptr as usize)
}

/// Purges a block's dirty range (its other pages are not resident).
fn purge(c: &mut Cached) {
    purge_from(c, c.dirty.start);
}

/// Purges the end of a block's dirty range, from `at` (a page boundary in
/// it): the range then ends at `at` (C1).
fn purge_from(c: &mut Cached, at: usize) {
    let d = c.dirty;
    if d.is_empty() {
        return;
    }
    debug_assert!(d.start <= at && at < d.end && at % spf_core::PAGE_SIZE == 0);
    // SAFETY: pages of a freed block we hold alone (L2): nothing in it will
    // be read; a block's range and `at` lie on page boundaries.
    if unsafe { spf_core::purge_pages(at as *mut u8, d.end - at) }.is_ok() {
        c.dirty = d.within(d.start, at);
    }
}

fn destroy(c: &Cached) {
    // The range goes back to spf-core, which may hand it to a segment:
    // that must not inherit the huge-page advice.
    unadvise_huge(c.ptr, c.len, c.lazy);
    // SAFETY: a block out of the cache (or never cached): the only handle.
    drop(unsafe { Region::from_raw(c.ptr as *mut u8) });
}

/// Whether a block of `len` bytes gets transparent huge pages: eager
/// blocks of `HUGE_MIN` or more, unless `SPF_THP=off`.
fn wants_huge(len: usize, lazy: bool) -> bool {
    !lazy && len >= HUGE_MIN && options::huge_pages()
}

/// Asks for transparent huge pages on `[ptr, ptr + len)`, before its first
/// touch (the kernel places a huge page at a fault only in an advised,
/// 2 MiB-aligned range wholly inside the mapping).
fn advise_huge(ptr: usize, len: usize) {
    // SAFETY: a live eager block's range, ours; the advice changes only
    // the page size the kernel backs it with, never its contents. It may
    // fail (no THP in this kernel): the block keeps 4 KiB pages.
    unsafe { libc::madvise(ptr as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
}

/// Takes the huge-page advice back from a range leaving large blocks
/// (destroyed, or a decommitted tail): spf-core may reuse it for a
/// segment, whose 64 KiB pages must not fault in 2 MiB at a time. Lazy
/// blocks were never advised (and lie in the lazy zone, whose mapping an
/// advice would split).
fn unadvise_huge(ptr: usize, len: usize, lazy: bool) {
    if lazy || !options::huge_pages() {
        return;
    }
    // SAFETY: a range of a block we hold alone; as in `advise_huge`.
    unsafe { libc::madvise(ptr as *mut libc::c_void, len, libc::MADV_NOHUGEPAGE) };
}

/// Purges the bytes over the cap while the cache holds more dirty bytes
/// than its cap: the end of the oldest dirty block's dirty range, from a
/// 2 MiB boundary (so no huge page is cut) at least that many bytes before
/// its end, or the whole range where that boundary falls before it (16
/// purges at most — the oldest are often small kept tails — the next call
/// goes on). The block stays whole, so it still serves a request of its
/// length, resident pages first. Called when live bytes grow (a block made
/// or taken from the cache, or grown in place by `realloc`), which shrinks
/// the cap, and when a free or a `realloc` caches a block.
fn purge_over_cap() {
    for _ in 0..16 {
        let (mut c, over) = {
            let mut cache = CACHE.lock();
            let cap = dirty_cap();
            if cache.dirty_bytes <= cap {
                return;
            }
            let over = cache.dirty_bytes - cap;
            let oldest = (0..cache.n)
                .filter(|&i| cache.entries[i].is_dirty())
                .min_by_key(|&i| cache.entries[i].freed_at);
            match oldest {
                Some(i) => (cache.remove(i), over),
                None => return,
            }
        };
        PURGED_OVER_CAP.fetch_add(1, Relaxed);
        let d = c.dirty;
        let at = d.end.saturating_sub(over) & !(HUGE_PAGE - 1);
        purge_from(&mut c, at.max(d.start)); // taken out: ours alone (L2)
        if !CACHE.lock().insert(c) {
            destroy(&c);
        }
        if c.dirty == d {
            // Could not be purged: not tried again in this call.
            return;
        }
    }
}

/// Purges every cached block now, whatever its age.
pub fn purge_all() {
    // One pass over what is cached now: a block that fails to purge is put
    // back dirty and not tried again in this call.
    for _ in 0..CACHE_ENTRIES {
        let mut c = {
            let mut cache = CACHE.lock();
            match (0..cache.n).find(|&i| cache.entries[i].is_dirty()) {
                Some(i) => cache.remove(i),
                None => return,
            }
        };
        purge(&mut c);
        let inserted = CACHE.lock().insert(c);
        if !inserted {
            destroy(&c);
        }
        if c.is_dirty() {
            return;
        }
    }
}

/// Resizes a large block in place if its region can grow or shrink there,
/// else moves it. Null (and the old block untouched) when memory is out.
pub fn realloc(
    ptr: *mut u8,
    old_size: usize,
    align: usize,
    new_size: usize,
    lazy: bool,
) -> *mut u8 {
    let (Some(old_len), Some(new_len)) = (round(old_size), round(new_size)) else {
        return null_mut();
    };
    if new_len == old_len {
        return ptr;
    }
    if lazy && new_len > old_len {
        // The grown part faults in on touch (see `alloc_fit`).
        spf_core::ensure_fault_handler();
    }
    // SAFETY: `ptr` is a live large block (the caller's contract): its
    // region starts there and we hold the only handle while resizing.
    let Some(mut region) = (unsafe { Region::from_raw(ptr) }) else {
        return null_mut();
    };
    if new_len < old_len {
        // The freed tail is cached like a freed block.
        let like = Cached {
            ptr: ptr as usize,
            len: old_len,
            freed_at: crate::decay::now(),
            dirty: Dirty::whole(ptr as usize, old_len),
            lazy,
        };
        shrink_keeping_tail(&mut region, new_len, &like, Tails::Usable);
        region.into_raw();
        LIVE_BYTES.fetch_sub((old_len - new_len) as u64, Relaxed);
        // A kept tail added dirty bytes.
        purge_over_cap();
        return ptr;
    }
    if region.grow(new_len).is_ok() {
        if wants_huge(new_len, lazy) {
            advise_huge(ptr as usize, new_len);
        }
        region.into_raw();
        LIVE_BYTES.fetch_add((new_len - old_len) as u64, Relaxed);
        // Live bytes grew without a cached block leaving: the cap shrank.
        purge_over_cap();
        return ptr;
    }
    // Keep L1: a failed eager grow may have grown the region lazily.
    if region.len() != old_len {
        region.shrink(old_len);
    }
    if grow_into_next(&mut region, new_len, lazy) {
        region.into_raw();
        REALLOC_INTO_CACHED.fetch_add(1, Relaxed);
        LIVE_BYTES.fetch_add((new_len - old_len) as u64, Relaxed);
        purge_over_cap();
        return ptr;
    }
    region.into_raw();
    let new = alloc_fit(new_size, align, lazy, false, Fit::Near);
    if new.is_null() {
        return null_mut();
    }
    if lazy {
        // docs/DESIGN.md: the allocator commits lazy memory before writing into it.
        // SAFETY: `new` is a live large block we just allocated.
        if let Some(r) = unsafe { Region::from_raw(new) } {
            let _ = r.commit(0..old_size);
            r.into_raw();
        }
    }
    // SAFETY: both blocks are live and distinct; `old_size` bytes are valid
    // in the old one and fit the new one.
    unsafe { core::ptr::copy_nonoverlapping(ptr, new, old_size) };
    dealloc(ptr, old_size, lazy);
    new
}

/// Takes the cache lock for `fork`, and marks every dirty cached block
/// `MADV_WIPEONFORK`: the child gets those ranges as fresh zero pages (they
/// hold no live data: a free block's contents are unspecified), and the
/// parent's pages are not shared with it — otherwise each page of a cached
/// block written after the fork (when the block is reused) would take a
/// copy-on-write fault, or at least a write-protect fault once the child
/// has exited.
pub fn fork_lock() {
    CACHE.lock_forever();
    // SAFETY: just locked forever by this thread.
    set_wipe_on_fork(unsafe { CACHE.forgotten() }, true);
}

/// # Safety
/// After `fork_lock`, in the parent or the child.
pub unsafe fn fork_unlock() {
    // SAFETY: the lock is held (forever) since `fork_lock`, and this thread
    // is the one that took it (or the child's copy of it).
    set_wipe_on_fork(unsafe { CACHE.forgotten() }, false);
    // SAFETY: the caller's contract.
    unsafe { CACHE.unlock_forgotten() };
}

/// Sets or clears `MADV_WIPEONFORK` on the cached eager blocks (clearing
/// it on all of them: a block marked before the fork may have been purged since only in
/// a child, which runs no allocator code before this). A block taken out
/// of the cache is never marked: blocks are marked only under the lock held
/// across `fork`, and cleared before it is released.
fn set_wipe_on_fork(cache: &Cache, wipe: bool) {
    let advice = if wipe {
        libc::MADV_WIPEONFORK
    } else {
        libc::MADV_KEEPONFORK
    };
    for c in &cache.entries[..cache.n] {
        // Lazy blocks are left alone: under the `guard` backend their
        // uncommitted granules are kept inaccessible by guard markers,
        // which a wiped range loses in the child (its page tables are not
        // copied), so the child could write them without a fault.
        if c.lazy || (wipe && !c.is_dirty()) {
            continue;
        }
        // SAFETY: a cached block's range lies in a live region (L2) and
        // holds nothing anyone reads; the advice changes only what a fork
        // copies. It may fail (a kernel before 4.14): then the fork copies
        // the block as before.
        unsafe { libc::madvise(c.ptr as *mut libc::c_void, c.len, advice) };
    }
}

#[cfg(test)]
mod tests {
    use super::{Cached, Dirty, EMPTY};

    const MIB: usize = 1 << 20;

    fn dirty(start: usize, end: usize) -> Dirty {
        Dirty { start, end }
    }

    #[test]
    fn merged_blocks_keep_their_dirty_parts_apart_from_purged_ones() {
        // [purged 32 MiB | dirty 32 MiB]: 32 MiB dirty, not 64.
        let purged = Dirty::NONE;
        let freed = Dirty::whole(32 * MIB, 32 * MIB);
        assert_eq!(purged.join(freed), dirty(32 * MIB, 64 * MIB));
        assert_eq!(freed.join(purged).len(), 32 * MIB);
        // Two dirty parts with a purged one between: the hull, an
        // overestimate (C1 holds).
        let far = Dirty::whole(96 * MIB, 8 * MIB);
        assert_eq!(freed.join(far), dirty(32 * MIB, 104 * MIB));
    }

    #[test]
    fn a_part_keeps_only_its_own_dirty_range() {
        let block = Cached {
            ptr: 0,
            len: 64 * MIB,
            dirty: dirty(32 * MIB, 64 * MIB),
            ..EMPTY
        };
        // The head, split off for a request, is clean; the tail dirty.
        assert!(!block.part(0, 32 * MIB).is_dirty());
        assert_eq!(
            block.part(16 * MIB, 48 * MIB).dirty,
            dirty(32 * MIB, 64 * MIB)
        );
        assert_eq!(
            block.part(40 * MIB, 8 * MIB).dirty,
            dirty(40 * MIB, 48 * MIB)
        );
        // A request of 40 MiB finds 8 MiB of it resident, of 32 MiB none.
        assert_eq!(block.dirty_head(40 * MIB).len(), 8 * MIB);
        assert!(block.dirty_head(32 * MIB).is_empty());
    }
}
