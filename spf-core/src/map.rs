//! `RegionMap`: address → region descriptor, lock-free for readers (the
//! kernel's VMA tree).
//!
//! A two-level radix table over the reservation, in the spirit of jemalloc's
//! `rtree`: level 1 has one entry per 2 MiB *chunk*; an entry is empty, the
//! id of a region that covers the whole chunk, or `LEAF`, meaning "look in
//! this chunk's leaf", which has one entry per 4 KiB page. Both levels are
//! flat tables mapped once and never unmapped, so a lookup is two loads,
//! takes no lock, allocates nothing, and can run inside the fault handler.
//!
//! Cost: a lookup is O(1) — it does not grow with the number of regions.
//! Inserting or removing a region costs O(len / 2 MiB) level-1 stores plus at
//! most 2 × 512 leaf stores for its partial chunks at each end.
//!
//! Readers may see a table in the middle of an update and get an empty
//! answer or the id of a neighbour. That is why every lookup result is only
//! a *hint*: the fault path validates it against the descriptor's bounds
//! under the descriptor's sequence count, and an empty answer is confirmed
//! under the space lock.
//!
//! Invariants:
//! - M1: written only under the space lock.
//! - M2: a chunk's leaf is all zero unless its level-1 entry is `LEAF`.
//! - M3: a published id names a descriptor whose bounds were written before
//!   the id (Release stores here pair with Acquire loads in `lookup`).

use crate::sys;
use core::sync::atomic::{AtomicU32, Ordering};

pub const CHUNK_SHIFT: u32 = 21;
pub const CHUNK: usize = 1 << CHUNK_SHIFT;
const PAGE_SHIFT: u32 = 12;
const PAGES_PER_CHUNK: usize = CHUNK >> PAGE_SHIFT;
const LEAF: u32 = 1 << 31;

/// A region descriptor's index in the descriptor table (never 0).
pub type RegionIdx = u32;

pub struct RegionMap {
    base: usize,
    level1: &'static [AtomicU32],
    leaves: &'static [AtomicU32],
}

fn table(entries: usize) -> Result<&'static [AtomicU32], sys::Errno> {
    let bytes = sys::map_table(entries * 4)?;
    // SAFETY: map_table gives zeroed, writable memory of at least that size,
    // never unmapped; AtomicU32 has u32's layout and zero means "empty".
    Ok(unsafe { core::slice::from_raw_parts(bytes as *const AtomicU32, entries) })
}

impl RegionMap {
    /// A map for the reservation `[base, base + len)`; `len` is a multiple
    /// of [`CHUNK`].
    pub fn new(base: usize, len: usize) -> Result<RegionMap, sys::Errno> {
        let chunks = len >> CHUNK_SHIFT;
        Ok(RegionMap {
            base,
            level1: table(chunks)?,
            leaves: table(chunks * PAGES_PER_CHUNK)?,
        })
    }

    /// The region that may contain `addr` (a hint; see the module docs).
    /// `addr` must lie inside the reservation.
    #[inline]
    pub fn lookup(&self, addr: usize) -> Option<RegionIdx> {
        let off = addr - self.base;
        let chunk = off >> CHUNK_SHIFT;
        let e = self.level1[chunk].load(Ordering::Acquire);
        let id = if e & LEAF == 0 {
            e
        } else {
            let page = (off >> PAGE_SHIFT) & (PAGES_PER_CHUNK - 1);
            self.leaves[chunk * PAGES_PER_CHUNK + page].load(Ordering::Acquire)
        };
        (id != 0).then_some(id)
    }

    /// Maps `[start, end)` (page aligned) to `idx` (M1).
    pub fn insert(&self, start: usize, end: usize, idx: RegionIdx) {
        debug_assert!(idx != 0 && idx & LEAF == 0);
        self.set(start, end, idx);
    }

    /// Unmaps `[start, end)` (M1).
    pub fn remove(&self, start: usize, end: usize) {
        self.set(start, end, 0);
    }

    fn set(&self, start: usize, end: usize, id: u32) {
        let mut at = start;
        while at < end {
            let off = at - self.base;
            let chunk = off >> CHUNK_SHIFT;
            let chunk_start = self.base + (chunk << CHUNK_SHIFT);
            let chunk_end = chunk_start + CHUNK;
            let upto = end.min(chunk_end);
            if at == chunk_start && upto == chunk_end {
                self.set_whole_chunk(chunk, id);
            } else {
                self.set_in_leaf(chunk, at, upto, id);
            }
            at = upto;
        }
    }

    fn set_whole_chunk(&self, chunk: usize, id: u32) {
        let was = self.level1[chunk].load(Ordering::Relaxed);
        // Release (M3): the descriptor's fields are visible before the id.
        self.level1[chunk].store(id, Ordering::Release);
        if was & LEAF != 0 {
            self.clear_leaf(chunk); // M2
        }
    }

    fn set_in_leaf(&self, chunk: usize, from: usize, to: usize, id: u32) {
        let leaf = &self.leaves[chunk * PAGES_PER_CHUNK..(chunk + 1) * PAGES_PER_CHUNK];
        let e = self.level1[chunk].load(Ordering::Relaxed);
        if e & LEAF == 0 {
            if id == 0 && e == 0 {
                return;
            }
            // Expand a whole-chunk entry (or emptiness) into the leaf first,
            // so readers never see the chunk lose its other pages.
            for w in leaf {
                w.store(e, Ordering::Relaxed);
            }
            self.level1[chunk].store(LEAF, Ordering::Release);
        }
        let first = ((from - self.base) >> PAGE_SHIFT) & (PAGES_PER_CHUNK - 1);
        let count = (to - from) >> PAGE_SHIFT;
        for w in &leaf[first..first + count] {
            w.store(id, Ordering::Release);
        }
        if id == 0 && leaf.iter().all(|w| w.load(Ordering::Relaxed) == 0) {
            self.level1[chunk].store(0, Ordering::Release);
        }
    }

    fn clear_leaf(&self, chunk: usize) {
        for w in &self.leaves[chunk * PAGES_PER_CHUNK..(chunk + 1) * PAGES_PER_CHUNK] {
            w.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> (RegionMap, usize) {
        let len = 8 * CHUNK;
        // The map never dereferences an address: under Miri (which cannot
        // make a `PROT_NONE` reservation) any chunk-aligned number will do.
        let base = if cfg!(miri) {
            64 * CHUNK
        } else {
            sys::reserve(len, CHUNK).unwrap()
        };
        (RegionMap::new(base, len).unwrap(), base)
    }

    #[test]
    fn whole_and_partial_chunks() {
        let (m, b) = map();
        m.insert(b + CHUNK / 2, b + 3 * CHUNK + 4096, 7);
        assert_eq!(m.lookup(b), None);
        assert_eq!(m.lookup(b + CHUNK / 2 - 1), None);
        assert_eq!(m.lookup(b + CHUNK / 2), Some(7));
        assert_eq!(m.lookup(b + 2 * CHUNK + 5), Some(7));
        assert_eq!(m.lookup(b + 3 * CHUNK + 4095), Some(7));
        assert_eq!(m.lookup(b + 3 * CHUNK + 4096), None);
        m.insert(b + 3 * CHUNK + 4096, b + 3 * CHUNK + 8192, 9);
        assert_eq!(m.lookup(b + 3 * CHUNK + 4096), Some(9));
        // Shrinking a region that covers a whole chunk splits it into a leaf.
        m.remove(b + 2 * CHUNK + CHUNK / 2, b + 3 * CHUNK + 4096);
        assert_eq!(m.lookup(b + 2 * CHUNK), Some(7));
        assert_eq!(m.lookup(b + 2 * CHUNK + CHUNK / 2), None);
        assert_eq!(m.lookup(b + 3 * CHUNK + 4096), Some(9));
        m.remove(b + CHUNK / 2, b + 2 * CHUNK + CHUNK / 2);
        m.remove(b + 3 * CHUNK + 4096, b + 3 * CHUNK + 8192);
        for c in 0..8 {
            assert_eq!(
                m.level1[c].load(Ordering::Relaxed),
                0,
                "chunk {c} left non-empty"
            );
        }
        assert!(
            m.leaves.iter().all(|w| w.load(Ordering::Relaxed) == 0),
            "M2"
        );
    }
}
