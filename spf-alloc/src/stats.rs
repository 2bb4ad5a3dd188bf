//! `AllocStats`: what the allocator holds, beside spf-core's fault counters.

use crate::decay;
use crate::heap::{self, ALL_HEAPS};
use crate::large;
use crate::segment::{
    self, MEDIUM_PAGES_IN_USE, MEDIUM_PAGE_SIZE, SMALL_PAGES_IN_USE, SMALL_PAGE_SIZE,
};
use core::fmt;
use core::sync::atomic::Ordering::Relaxed;

/// A copy of the allocator's figures at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Bytes in live blocks (small and medium blocks counted at their class
    /// size, large blocks at their 64 KiB-rounded size).
    pub allocated: u64,
    /// Bytes of pages and large blocks that hold live blocks.
    pub active: u64,
    /// Bytes committed by spf-core (all regions, the allocator's included).
    pub committed: u64,
    /// The process's resident memory (`/proc/self/statm`), 0 if unknown.
    pub resident: u64,
    /// spf-core regions alive (segments, large blocks, arenas, metadata).
    pub live_regions: u64,
    /// Large blocks alive.
    pub large_blocks: u64,
    /// Bytes of freed large blocks kept for reuse.
    pub cached_large: u64,
    /// Large allocations served by a cached block (ever).
    pub large_reused: u64,
    /// Of those, served by a larger cached block shrunk in place to the
    /// request (its tail split off and cached, however small).
    pub large_reused_shrunk: u64,
    /// Tails of shrunk cached blocks split off and cached as blocks of
    /// their own (ever).
    pub large_split_tails: u64,
    /// Cached large blocks merged with a block freed next to them (ever).
    pub large_merged: u64,
    /// Large `realloc`s grown in place by taking in the cached block after
    /// them (ever).
    pub large_realloc_into_cached: u64,
    /// Of `large_reused`, served by a smaller cached block grown in place.
    pub large_reused_grown: u64,
    /// Purges of cached large blocks before their decay time because the
    /// cache's resident bytes passed its cap, each of a block's resident
    /// range or of the end of it (ever).
    pub large_purged_over_cap: u64,
    /// Idle stretches (more than 100 ms between two readings of the decay
    /// clock) that decay did not count past 100 ms (ever): memory freed
    /// before one is purged after the decay time of activity, not at the
    /// first allocator call after it.
    pub decay_idle_stretches: u64,
    /// Thread heaps ever made (they are recycled when threads exit).
    pub heaps: u64,
    /// Pages of thread heaps given back to the kernel by another thread,
    /// because every block in them had been freed by other threads while
    /// their owner was idle (or `purge` ran).
    pub pages_reclaimed: u64,
    /// Pages of live thread heaps whose blocks had all been freed by other
    /// threads, handed to the page pool by a thread about to touch fresh
    /// memory, whatever their owner was doing (ever).
    pub pages_handed_over: u64,
    /// Pages thread heaps took from the page pool or from new segments
    /// (ever), when neither their own pages of the class nor an abandoned
    /// page had room (adopted pages are not counted).
    pub pages_taken: u64,
    /// 4 KiB runs of memory inside pages that still hold live blocks,
    /// covered only by free blocks, given back to the kernel by their
    /// thread's decay or `purge` (ever).
    pub page_runs_purged: u64,
    /// Blocks freed by other threads that their pages' owners collected
    /// (took off the pages' remote-free lists to allocate again); blocks of
    /// pages that were given back whole, abandoned or reclaimed are not
    /// counted.
    pub remote_collected: u64,
    /// Chains of remote frees that threads' remote-free buffers sent to
    /// their pages, each pushed with one CAS (or, when its page had been
    /// abandoned, freed block by block under the abandoned lists' lock)
    /// (ever; heaps of exited threads included).
    pub remote_batches: u64,
    /// Blocks in those chains (ever): over `remote_batches`, the blocks
    /// pushed per CAS.
    pub remote_batched: u64,
    /// Allocations served by thread caches (ever): small blocks a thread
    /// freed and handed out again to its own allocations. Counted 256 at a
    /// time, so a live thread's last (fewer than 256) may not be in yet,
    /// except the calling thread's, which are.
    pub cache_hits: u64,
    /// Blocks thread caches gave back to their pages (ever): on decay
    /// trims (the blocks not needed since the last), `spf::purge()` and
    /// thread exits.
    pub cache_given_back: u64,
    /// spf-core's fault counters.
    pub core: spf_core::Stats,
}

/// The allocator's figures now. Reads counters without locks; never
/// allocates.
pub fn stats() -> AllocStats {
    let mut small: i64 = -heap::FALLBACK_FREED.load(Relaxed);
    let mut heaps = 0;
    let mut remote_collected = 0u64;
    let (mut remote_batches, mut remote_batched) = (0u64, 0u64);
    let (mut cache_hits, mut cache_given_back) = (0u64, 0u64);
    let mut h = ALL_HEAPS.load(core::sync::atomic::Ordering::Acquire);
    while !h.is_null() {
        // SAFETY: heaps are never freed.
        unsafe {
            small += (*h).allocated.load(Relaxed);
            remote_collected = remote_collected.wrapping_add((*h).remote_collected.load(Relaxed));
            remote_batches = remote_batches.wrapping_add((*h).remote_batches.load(Relaxed));
            remote_batched = remote_batched.wrapping_add((*h).remote_batched.load(Relaxed));
            cache_hits = cache_hits.wrapping_add((*h).cache_hits.load(Relaxed));
            cache_given_back = cache_given_back.wrapping_add((*h).cache_given_back.load(Relaxed));
            h = (*h).next_all.load(Relaxed);
        }
        heaps += 1;
    }
    let core = spf_core::stats();
    let large_bytes = large::LIVE_BYTES.load(Relaxed);
    AllocStats {
        allocated: small.max(0) as u64 + large_bytes,
        active: SMALL_PAGES_IN_USE.load(Relaxed) * SMALL_PAGE_SIZE as u64
            + MEDIUM_PAGES_IN_USE.load(Relaxed) * MEDIUM_PAGE_SIZE as u64
            + large_bytes,
        committed: core.committed_bytes,
        resident: spf_core::resident_bytes().unwrap_or(0) as u64,
        live_regions: core.live_regions,
        large_blocks: large::LIVE_BLOCKS.load(Relaxed),
        cached_large: large::CACHED_BYTES.load(Relaxed),
        large_reused: large::REUSED.load(Relaxed),
        large_reused_shrunk: large::REUSED_SHRUNK.load(Relaxed),
        large_reused_grown: large::REUSED_GROWN.load(Relaxed),
        large_split_tails: large::SPLIT_TAILS.load(Relaxed),
        large_merged: large::MERGED.load(Relaxed),
        large_realloc_into_cached: large::REALLOC_INTO_CACHED.load(Relaxed),
        large_purged_over_cap: large::PURGED_OVER_CAP.load(Relaxed),
        decay_idle_stretches: decay::IDLE_STRETCHES.load(Relaxed),
        heaps,
        pages_reclaimed: heap::PAGES_RECLAIMED.load(Relaxed),
        pages_handed_over: heap::PAGES_HANDED_OVER.load(Relaxed),
        pages_taken: segment::PAGES_TAKEN.load(Relaxed),
        page_runs_purged: heap::PAGE_RUNS_PURGED.load(Relaxed),
        remote_collected,
        remote_batches,
        remote_batched,
        cache_hits: cache_hits.wrapping_add(heap::own_cache_hits_pending()),
        cache_given_back,
        core,
    }
}

impl AllocStats {
    fn fmt_own(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, " Allocator stats for spf:")?;
        for (v, name) in self.rows() {
            writeln!(f, "{v:>16}      {name}")?;
        }
        Ok(())
    }

    /// The allocator's own figures with their names, in print order.
    fn rows(&self) -> [(u64, &'static str); 25] {
        [
            (self.allocated, "bytes_allocated"),
            (self.active, "bytes_active"),
            (self.committed, "bytes_committed"),
            (self.resident, "bytes_resident"),
            (self.live_regions, "regions"),
            (self.large_blocks, "large_blocks"),
            (self.cached_large, "bytes_cached_large"),
            (self.large_reused, "large_reused"),
            (self.large_reused_shrunk, "large_reused_shrunk"),
            (self.large_reused_grown, "large_reused_grown"),
            (self.large_split_tails, "large_split_tails"),
            (self.large_merged, "large_merged"),
            (self.large_realloc_into_cached, "large_realloc_into_cached"),
            (self.large_purged_over_cap, "large_purged_over_cap"),
            (self.decay_idle_stretches, "decay_idle_stretches"),
            (self.heaps, "heaps"),
            (self.pages_reclaimed, "pages_reclaimed"),
            (self.pages_handed_over, "pages_handed_over"),
            (self.pages_taken, "pages_taken"),
            (self.page_runs_purged, "page_runs_purged"),
            (self.remote_collected, "remote_collected"),
            (self.remote_batches, "remote_batches"),
            (self.remote_batched, "remote_batched"),
            (self.cache_hits, "cache_hits"),
            (self.cache_given_back, "cache_given_back"),
        ]
    }
}

/// The allocator's figures, then spf-core's counters, `perf stat` style.
impl fmt::Display for AllocStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_own(f)?;
        write!(f, "{}", self.core)
    }
}

/// Registered with `atexit` when `SPF_STATS=1`; spf-core prints its own
/// counters next to these.
///
/// One write per line: `spf_core::report` formats into a fixed 512-byte
/// buffer, which the whole table overflows (it was cut after 14 rows).
pub(crate) extern "C" fn print_at_exit() {
    let s = stats();
    spf_core::report(format_args!("\n Allocator stats for spf:\n"));
    for (v, name) in s.rows() {
        spf_core::report(format_args!("{v:>16}      {name}\n"));
    }
}
