//! `ExtentAllocator`: which pages of the reservation are free, for carving
//! regions out of it.
//!
//! Free extents are nodes in a fixed pool, kept in 32 size bins by
//! `floor(log2(pages))` (like TLSF's first level), with a bitmask of
//! non-empty bins. A flat `boundary` table, one word per page, names the
//! free extent that starts or ends on that page, so freeing coalesces with
//! both neighbours in O(1). Nothing here allocates: the pool and the table
//! are mapped once.
//!
//! Invariants (all under the space lock):
//! - E1: free extents never touch: two adjacent free extents are merged.
//! - E2: `boundary[p] == n` iff free extent `n` starts or ends at page `p`;
//!   every other word is 0.
//! - E3: a node is in exactly one of: its size bin's list, the spare list,
//!   the never-used tail (`unused..`).

use crate::sys;

const BINS: usize = 32;
const NIL: u32 = 0;

#[derive(Clone, Copy)]
struct Node {
    start: u32,
    pages: u32,
    prev: u32,
    next: u32,
}

pub struct ExtentAllocator {
    /// The absolute page number of page 0, so alignment is of addresses.
    base_page: u64,
    total: u32,
    nodes: &'static mut [Node],
    boundary: &'static mut [u32],
    bins: [u32; BINS],
    nonempty: u32,
    spare: u32,
    /// Nodes from here on were never used: the pool is carved lazily, so
    /// its memory is touched only as extents appear.
    unused: u32,
    free_pages: u64,
}

fn bin_of(pages: u32) -> usize {
    (31 - pages.leading_zeros()) as usize
}

impl ExtentAllocator {
    /// An allocator for `total` pages starting at absolute page `base_page`,
    /// all free, able to track `max_extents` free extents at once.
    pub fn new(
        base_page: u64,
        total: u32,
        max_extents: usize,
    ) -> Result<ExtentAllocator, sys::Errno> {
        let n = max_extents + 1;
        let nodes = sys::map_table(n * core::mem::size_of::<Node>())?;
        let boundary = sys::map_table(total as usize * 4)?;
        // SAFETY: both tables are fresh zeroed mappings of the right size,
        // never unmapped, used only by this allocator (under the space lock);
        // an all-zero Node and an all-zero u32 are valid values.
        let (nodes, boundary) = unsafe {
            (
                core::slice::from_raw_parts_mut(nodes as *mut Node, n),
                core::slice::from_raw_parts_mut(boundary as *mut u32, total as usize),
            )
        };
        let mut a = ExtentAllocator {
            base_page,
            total,
            nodes,
            boundary,
            bins: [NIL; BINS],
            nonempty: 0,
            spare: NIL,
            unused: 1,
            free_pages: 0,
        };
        a.insert_free(0, total);
        Ok(a)
    }

    /// Pages free now.
    pub fn free_pages(&self) -> u64 {
        self.free_pages
    }

    /// Takes `pages` pages whose first page is a multiple of `align` (a power
    /// of two, in pages). `None` if no free extent fits.
    pub fn alloc(&mut self, pages: u32, align: u32) -> Option<u32> {
        debug_assert!(pages > 0 && align.is_power_of_two());
        let base = self.base_page;
        let aligned = move |start: u32| -> u64 {
            (base + start as u64).next_multiple_of(align as u64) - base
        };
        let fits = |n: &Node| aligned(n.start) + pages as u64 <= n.start as u64 + n.pages as u64;
        let mut found = NIL;
        let first = bin_of(pages);
        'bins: for bin in first..BINS {
            if self.nonempty & (1 << bin) == 0 {
                continue;
            }
            let mut i = self.bins[bin];
            let mut looked = 0;
            while i != NIL && looked < 32 {
                if fits(&self.nodes[i as usize]) {
                    found = i;
                    break 'bins;
                }
                i = self.nodes[i as usize].next;
                looked += 1;
            }
        }
        if found == NIL {
            return None;
        }
        let n = self.nodes[found as usize];
        self.remove_node(found);
        let start = aligned(n.start) as u32;
        if start > n.start {
            self.insert_free(n.start, start - n.start);
        }
        let end = n.start + n.pages;
        if end > start + pages {
            self.insert_free(start + pages, end - start - pages);
        }
        Some(start)
    }

    /// Takes exactly `[start, start + pages)` if it is free (growing a region
    /// in place). Returns whether it was taken; nothing (`pages == 0`) is
    /// never taken, so a caller's truncated count cannot pass for success.
    pub fn take_at(&mut self, start: u32, pages: u32) -> bool {
        if pages == 0 || start >= self.total {
            return false;
        }
        let i = self.boundary[start as usize];
        if i == NIL {
            return false;
        }
        let n = self.nodes[i as usize];
        if n.start != start || n.pages < pages {
            return false;
        }
        self.remove_node(i);
        if n.pages > pages {
            self.insert_free(start + pages, n.pages - pages);
        }
        true
    }

    /// Returns `[start, start + pages)` to the free set, merging with free
    /// neighbours (E1).
    pub fn free(&mut self, mut start: u32, mut pages: u32) {
        if start > 0 {
            let l = self.boundary[start as usize - 1];
            if l != NIL {
                let n = self.nodes[l as usize];
                debug_assert_eq!(n.start + n.pages, start, "E1: overlapping free");
                self.remove_node(l);
                start = n.start;
                pages += n.pages;
            }
        }
        let end = start + pages;
        if end < self.total {
            let r = self.boundary[end as usize];
            if r != NIL {
                let n = self.nodes[r as usize];
                debug_assert_eq!(n.start, end, "E1: overlapping free");
                self.remove_node(r);
                pages += n.pages;
            }
        }
        self.insert_free(start, pages);
    }

    fn insert_free(&mut self, start: u32, pages: u32) {
        // The pool holds 2 × max_regions + 64 nodes, and free extents are
        // separated by live regions or ranges in their grace period (E1),
        // so it cannot run dry.
        let i = if self.spare != NIL {
            let i = self.spare;
            self.spare = self.nodes[i as usize].next;
            i
        } else {
            assert!(
                (self.unused as usize) < self.nodes.len(),
                "spf: extent pool exhausted"
            );
            self.unused += 1;
            self.unused - 1
        };
        let bin = bin_of(pages);
        let head = self.bins[bin];
        self.nodes[i as usize] = Node {
            start,
            pages,
            prev: NIL,
            next: head,
        };
        if head != NIL {
            self.nodes[head as usize].prev = i;
        }
        self.bins[bin] = i;
        self.nonempty |= 1 << bin;
        self.boundary[start as usize] = i;
        self.boundary[(start + pages - 1) as usize] = i;
        self.free_pages += pages as u64;
    }

    fn remove_node(&mut self, i: u32) {
        let n = self.nodes[i as usize];
        let bin = bin_of(n.pages);
        if n.prev != NIL {
            self.nodes[n.prev as usize].next = n.next;
        } else {
            self.bins[bin] = n.next;
            if n.next == NIL {
                self.nonempty &= !(1 << bin);
            }
        }
        if n.next != NIL {
            self.nodes[n.next as usize].prev = n.prev;
        }
        self.boundary[n.start as usize] = NIL;
        self.boundary[(n.start + n.pages - 1) as usize] = NIL;
        self.nodes[i as usize].next = self.spare;
        self.spare = i;
        self.free_pages -= n.pages as u64;
    }

    /// Calls `f(start, pages)` for every free extent (invariant checks).
    pub fn for_each_free(&self, mut f: impl FnMut(u32, u32)) {
        for bin in 0..BINS {
            let mut i = self.bins[bin];
            while i != NIL {
                let n = self.nodes[i as usize];
                f(n.start, n.pages);
                i = n.next;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shadow model: a plain vector of page states, checked after every step.
    #[test]
    fn random_alloc_free_matches_a_model() {
        const TOTAL: u32 = 4096;
        let mut a = ExtentAllocator::new(3, TOTAL, 4096).unwrap();
        let mut used = vec![false; TOTAL as usize];
        let mut live: Vec<(u32, u32)> = Vec::new();
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        // Miri runs this some 10,000 times slower: fewer steps there.
        let steps = if cfg!(miri) { 150 } else { 20_000 };
        for _ in 0..steps {
            if live.is_empty() || next() % 3 != 0 {
                let pages = (next() % 64 + 1) as u32;
                let align = 1u32 << (next() % 5);
                if let Some(s) = a.alloc(pages, align) {
                    assert_eq!((3 + s) % align, 0, "aligned as an address");
                    for p in s..s + pages {
                        assert!(!used[p as usize], "page {p} handed out twice");
                        used[p as usize] = true;
                    }
                    live.push((s, pages));
                }
            } else {
                let (s, pages) = live.swap_remove((next() as usize) % live.len());
                for p in s..s + pages {
                    used[p as usize] = false;
                }
                a.free(s, pages);
            }
            let free_model = used.iter().filter(|u| !**u).count() as u64;
            assert_eq!(a.free_pages(), free_model);
        }
        let mut extents = Vec::new();
        a.for_each_free(|s, p| extents.push((s, p)));
        extents.sort();
        for w in extents.windows(2) {
            assert!(
                w[0].0 + w[0].1 < w[1].0,
                "E1: adjacent free extents not merged"
            );
        }
        for (s, p) in live.drain(..) {
            a.free(s, p);
        }
        let mut all = Vec::new();
        a.for_each_free(|s, p| all.push((s, p)));
        assert_eq!(all, vec![(0, TOTAL)]);
    }

    #[test]
    fn take_at_grows_in_place() {
        let mut a = ExtentAllocator::new(0, 100, 16).unwrap();
        let s = a.alloc(10, 1).unwrap();
        assert!(a.take_at(s + 10, 5));
        assert!(!a.take_at(s + 10, 5), "taken twice");
        let t = a.alloc(10, 1).unwrap();
        assert_eq!(t, s + 15);
        assert!(!a.take_at(s + 15, 1));
        assert!(a.alloc(1000, 1).is_none());
    }
}
