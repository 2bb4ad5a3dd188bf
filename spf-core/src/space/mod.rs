//! `Space`: the process's reservation and everything that describes it (the
//! kernel's `mm_struct`): the space lock, the region map, the descriptor
//! table, the granule table and the zones' free-range allocators. Region
//! writers — create, destroy, grow, shrink, commit, decommit, protect —
//! live here; what each does inside its write section is in `write` (which
//! the loom model compiles unchanged), the invariant checker in `check`,
//! the fork handlers in `fork`; start-up is the crate's `startup` module.
//!
//! Every writer follows one pattern (docs/DESIGN.md, "Writers"):
//! 1. take the space lock (no lazy memory is touched while it is held);
//! 2. make the region's `seq` odd (S3: from here on, no fault can start a
//!    commit in the region);
//! 3. lock the granule words of the range it changes, waiting for faults
//!    that are committing there to finish (G1);
//! 4. change the region, the kernel's protections and the map;
//! 5. unlock the words with their new states, make `seq` even.
//!
//! Steps 2 and 5 are one guard, [`write::WriteSection`].
//!
//! A destroyed region's descriptor and address range are handed back to the
//! free lists only after an epoch grace period (D3, `epoch`), by a deferred
//! function that takes the space lock — so a pinned normal-path reader never
//! sees them reused, and a fault handler that read a stale descriptor finds
//! its sequence count changed.
//!
//! Invariants:
//! - A1: the reservation `[base, base + len)` is never unmapped.
//! - A2: a zone's `extents` is touched only with the space lock held.
//! - A3: live regions and free extents are disjoint and never overlap; pages
//!   of a destroyed region stay out of both until its grace period ends.
//! - A4: a region lies wholly inside one zone (see `backend`): the zone's
//!   extent allocator carved it, and grows it only from its own pages.

mod check;
pub(crate) mod fork;
pub(crate) mod write;

use crate::backend;
use crate::commit::CommitPlan;
use crate::descriptor::{DescriptorTable, RegionFlags};
use crate::epoch;
use crate::error::Error;
use crate::extent::ExtentAllocator;
use crate::granule::{GranuleState, GranuleTable};
use crate::lock::{SpaceGuard, SpaceLock};
use crate::map::{RegionIdx, RegionMap};
use crate::stats;
use crate::sys::{self, PAGE_SIZE};
use core::cell::UnsafeCell;
use core::sync::atomic::Ordering;
use write::WriteSection;

/// What a new region is to be: `RegionOptions`, checked (`region` builds
/// it, so the space needs no public API type).
#[derive(Clone, Copy, Debug)]
pub struct RegionSpec {
    /// A power of two from 4 KiB to 2 MiB.
    pub granule: usize,
    /// A power of two, at least a page.
    pub align: usize,
    pub read_only: bool,
    pub populate: bool,
    pub speculative: bool,
    pub eager: bool,
    pub commit_ahead: usize,
}

pub struct Space {
    pub base: usize,
    pub len: usize,
    /// Puts the fault handler back if someone displaced it (the `signal`
    /// module's, set at start-up); called under the space lock whenever a
    /// region may fault.
    pub(crate) reassert_handler: fn(),
    pub lock: SpaceLock,
    pub map: RegionMap,
    pub granules: GranuleTable,
    pub descs: DescriptorTable,
    /// Eager and huge-granule regions, and everything under `mprotect`.
    pub(crate) protected: Zone,
    /// Lazy regions under `uffd` or `guard` (see `backend`).
    pub(crate) lazy: Option<Zone>,
}

/// One zone of the reservation and the free ranges in it.
pub(crate) struct Zone {
    start: usize,
    len: usize,
    extents: UnsafeCell<ExtentAllocator>,
}

impl Zone {
    pub(crate) fn new(start: usize, len: usize, max_regions: usize) -> Result<Zone, sys::Errno> {
        let pages = u32::try_from(len / PAGE_SIZE).map_err(|_| sys::Errno(libc::EINVAL))?;
        Ok(Zone {
            start,
            len,
            extents: UnsafeCell::new(ExtentAllocator::new(
                (start / PAGE_SIZE) as u64,
                pages,
                2 * max_regions + 64,
            )?),
        })
    }

    fn contains(&self, addr: usize) -> bool {
        addr.wrapping_sub(self.start) < self.len
    }

    /// `bytes` (at most the zone's length) in pages.
    fn pages_in(&self, bytes: usize) -> u32 {
        debug_assert!(bytes <= self.len);
        // The zone's pages fit u32 (`new`), so no byte count up to its
        // length truncates.
        (bytes / PAGE_SIZE) as u32
    }

    fn page_of(&self, addr: usize) -> u32 {
        ((addr - self.start) / PAGE_SIZE) as u32
    }

    fn addr_of(&self, page: u32) -> usize {
        self.start + page as usize * PAGE_SIZE
    }

    #[allow(clippy::mut_from_ref)]
    fn extents<'g>(&'g self, _held: &'g SpaceGuard<'_>) -> &'g mut ExtentAllocator {
        // SAFETY: A2 — the caller holds the space lock, proven by `_held`,
        // and the borrow cannot outlive it.
        unsafe { &mut *self.extents.get() }
    }
}

// SAFETY: every field is either immutable after start, atomic, or (the
// zones' extent allocators) accessed only under the space lock (A2).
unsafe impl Sync for Space {}

impl Space {
    /// The zone holding `addr` (an address of the reservation).
    fn zone_of(&self, addr: usize) -> &Zone {
        match &self.lazy {
            Some(lazy) if lazy.contains(addr) => lazy,
            _ => &self.protected,
        }
    }

    /// The zones, protected first.
    fn zones(&self) -> impl Iterator<Item = &Zone> {
        core::iter::once(&self.protected).chain(self.lazy.as_ref())
    }

    /// Whether `addr` lies in the reservation. Async-signal-safe.
    #[inline]
    pub fn contains(&self, addr: usize) -> bool {
        addr.wrapping_sub(self.base) < self.len
    }

    /// Takes the space lock.
    pub fn lock(&self) -> SpaceGuard<'_> {
        self.lock.lock(sys::thread_id())
    }

    /// Reserves a region of `len` bytes (rounded up to the granule).
    /// Returns its descriptor index, start and length.
    pub fn create(
        &self,
        len: usize,
        opts: &RegionSpec,
    ) -> Result<(RegionIdx, usize, usize), Error> {
        let granule = opts.granule;
        let flags = RegionFlags::new(
            granule.trailing_zeros(),
            opts.read_only,
            opts.populate,
            opts.speculative,
        )
        .with_eager(opts.eager);
        let zone = match &self.lazy {
            Some(lazy) if backend::wants_lazy_zone(opts.eager, flags.huge()) => lazy,
            _ => &self.protected,
        };
        // A region lies in one zone (A4): a length or alignment past the
        // zone cannot be had, and whatever fits it counts its pages in u32.
        let len = match len.checked_next_multiple_of(granule) {
            Some(rounded) if len > 0 && rounded <= zone.len => rounded,
            _ => return Err(Error::BadSize { len }),
        };
        let pages = zone.pages_in(len);
        let align = opts.align;
        if align > zone.len {
            return Err(Error::BadAlignment { align });
        }
        let align = zone.pages_in(align);
        let ahead = (opts.commit_ahead / granule).min(u32::MAX as usize) as u32;
        for attempt in 0..4 {
            let held = self.lock();
            let Some(page) = zone.extents(&held).alloc(pages, align) else {
                let free = zone.extents(&held).free_pages() as usize * PAGE_SIZE;
                drop(held);
                if attempt < 3 {
                    // Ranges may be waiting out their grace period: let the
                    // epoch advance and the deferred releases run (P1: the
                    // lock is released).
                    epoch::pin().flush();
                    continue;
                }
                return Err(Error::ReservationExhausted {
                    requested: len,
                    free,
                    reserved: zone.len,
                });
            };
            let Some(idx) = self.descs.alloc() else {
                zone.extents(&held).free(page, pages);
                drop(held);
                if attempt < 3 {
                    epoch::pin().flush();
                    continue;
                }
                return Err(Error::TooManyRegions {
                    limit: self.descs.capacity(),
                });
            };
            // Any region may fault (a lazy one on first touch, an eager one
            // after decommit or when overrun): make sure faults reach us.
            (self.reassert_handler)();
            let start = zone.addr_of(page);
            let desc = self.descs.get(idx);
            let section = WriteSection::open(&held, desc, &self.granules, &self.map);
            desc.init(start, len, flags, ahead);
            if flags.huge() {
                // Only a hint: without THP the region still works with 4 KiB pages.
                let _ = sys::advise_huge(start, len);
            }
            let prepared = backend::prepare(start, len, flags.prot())
                .map_err(|(call, errno)| Error::System { call, errno });
            let committed = if prepared.is_err() {
                prepared
            } else if opts.eager {
                self.commit_locked(idx, start, start + len)
            } else {
                Ok(())
            };
            self.map.insert(start, start + len, idx);
            drop(section);
            stats::add_live_regions(1);
            if let Err(e) = committed {
                drop(held);
                self.destroy(idx);
                return Err(e);
            }
            return Ok((idx, start, len));
        }
        unreachable!("the last attempt returns")
    }

    /// Destroys a region: decommits it, unmaps it from the map, and hands
    /// its descriptor and range back after a grace period.
    pub fn destroy(&self, idx: RegionIdx) {
        {
            let held = self.lock();
            let desc = self.descs.get(idx);
            debug_assert!(desc.flags().live(), "destroying a dead region");
            WriteSection::open(&held, desc, &self.granules, &self.map).destroy();
            stats::add_live_regions(-1);
        }
        // P1: the lock is released before pinning.
        let guard = epoch::pin();
        let space: &'static Space = Space::ready().expect("a region implies a space");
        guard.defer(move || space.retire(idx));
        guard.flush();
    }

    /// The end of a destroyed region's grace period.
    fn retire(&self, idx: RegionIdx) {
        let held = self.lock();
        let desc = self.descs.get(idx);
        let pages = (desc.len() / PAGE_SIZE) as u32;
        let zone = self.zone_of(desc.start());
        zone.extents(&held).free(zone.page_of(desc.start()), pages);
        // A dead descriptor with a length is still in its grace period;
        // zero marks it retired (for `check_invariants`).
        let section = WriteSection::open(&held, desc, &self.granules, &self.map);
        desc.set_len(0);
        drop(section);
        self.descs.free(idx);
    }

    /// The end of a shrunk tail's grace period.
    fn release_range(&self, start: usize, pages: u32) {
        let held = self.lock();
        let zone = self.zone_of(start);
        zone.extents(&held).free(zone.page_of(start), pages);
    }

    /// Drops the pages of `[from, to)` without changing what is committed
    /// (no granule state changes, so no lock: faults are unaffected).
    pub fn purge(&self, from: usize, to: usize) -> Result<(), Error> {
        sys::discard(from, to - from).map_err(|errno| Error::System {
            call: "madvise",
            errno,
        })
    }

    /// Makes `[from, to)` of region `idx` accessible (granule aligned).
    pub fn commit(&self, idx: RegionIdx, from: usize, to: usize) -> Result<(), Error> {
        let _held = self.lock();
        self.commit_locked(idx, from, to)
    }

    /// Commits every `Uncommitted` granule of `[from, to)`, one backend
    /// call per run. Under the lock; `seq` need not be odd because each
    /// granule is locked (faults on it wait, G1).
    fn commit_locked(&self, idx: RegionIdx, from: usize, to: usize) -> Result<(), Error> {
        let desc = self.descs.get(idx);
        let flags = desc.flags();
        let granule = flags.granule();
        let mut run_start = from;
        let mut at = from;
        let mut result = Ok(());
        let flush = |run_start: usize, run_end: usize, result: &mut Result<(), Error>| {
            if run_end == run_start {
                return;
            }
            let len = run_end - run_start;
            let ok = match backend::commit(run_start, len, flags.prot(), flags.populate()) {
                Ok(()) => {
                    desc.committed.fetch_add(len, Ordering::Relaxed);
                    stats::add_committed(len as i64);
                    true
                }
                Err(errno) => {
                    *result = Err(Error::System {
                        call: backend::commit_call(run_start),
                        errno,
                    });
                    false
                }
            };
            let state = if ok {
                GranuleState::Committed
            } else {
                GranuleState::Uncommitted
            };
            let mut h = run_start;
            while h < run_end {
                self.granules.unlock(h, state);
                h += granule;
            }
        };
        while at < to {
            if self.granules.lock_settled(at) == GranuleState::Committed {
                flush(run_start, at, &mut result);
                self.granules.unlock(at, GranuleState::Committed);
                run_start = at + granule;
            } else if result.is_err() {
                self.granules.unlock(at, GranuleState::Uncommitted);
                run_start = at + granule;
            }
            at += granule;
        }
        flush(run_start, to, &mut result);
        result
    }

    /// Decommits `[from, to)` of region `idx` (granule aligned).
    pub fn decommit(&self, idx: RegionIdx, from: usize, to: usize) {
        let held = self.lock();
        (self.reassert_handler)();
        WriteSection::open(&held, self.descs.get(idx), &self.granules, &self.map)
            .decommit(from, to);
    }

    /// The live region ending at most `reach` bytes below `addr`, if no
    /// region lies between: `(start, end)`. Lock-free lookups, so
    /// async-signal-safe; exact when the caller holds the space lock.
    pub fn region_ending_below(&self, addr: usize, reach: usize) -> Option<(usize, usize)> {
        let lowest = addr.saturating_sub(reach).max(self.base);
        let mut page = addr & !(PAGE_SIZE - 1);
        while page > lowest {
            page -= PAGE_SIZE;
            if let Some(idx) = self.map.lookup(page) {
                let snap = self.descs.get(idx).snapshot()?;
                return (snap.flags.live() && snap.end <= addr).then_some((snap.start, snap.end));
            }
        }
        None
    }

    /// Changes a region's access; committed granules change with it.
    pub fn protect(&self, idx: RegionIdx, read_only: bool) -> Result<(), Error> {
        let held = self.lock();
        let section = WriteSection::open(&held, self.descs.get(idx), &self.granules, &self.map);
        let result = section.protect(read_only);
        drop(section);
        result.map_err(|errno| Error::System {
            call: "mprotect",
            errno,
        })
    }

    /// Grows a region in place to `new_len` (rounded up to the granule);
    /// the new part is lazy. A length that does not fit the region's zone
    /// is `BadSize`; one that would fit but for the regions after it,
    /// `CannotGrowInPlace`.
    pub fn grow(&self, idx: RegionIdx, new_len: usize) -> Result<usize, Error> {
        let held = self.lock();
        let desc = self.descs.get(idx);
        let granule = desc.flags().granule();
        let (start, len) = (desc.start(), desc.len());
        let zone = self.zone_of(start);
        let new_len = match new_len.checked_next_multiple_of(granule) {
            Some(rounded) if rounded <= zone.len => rounded,
            _ => return Err(Error::BadSize { len: new_len }),
        };
        if new_len <= len {
            return Ok(len);
        }
        let end = start + len;
        let extra = zone.pages_in(new_len - len);
        if !zone.contains(end) || !zone.extents(&held).take_at(zone.page_of(end), extra) {
            return Err(Error::CannotGrowInPlace { len, new_len });
        }
        if let Err((call, errno)) = backend::prepare(end, new_len - len, desc.flags().prot()) {
            zone.extents(&held).free(zone.page_of(end), extra);
            return Err(Error::System { call, errno });
        }
        let section = WriteSection::open(&held, desc, &self.granules, &self.map);
        desc.set_len(new_len);
        self.map.insert(end, start + new_len, idx);
        drop(section);
        Ok(new_len)
    }

    /// Shrinks a region in place to `new_len` (rounded up to the granule,
    /// at least one granule). The tail is decommitted now and reused after
    /// a grace period.
    pub fn shrink(&self, idx: RegionIdx, new_len: usize) -> usize {
        let (tail_start, tail_pages, kept) = {
            let held = self.lock();
            let desc = self.descs.get(idx);
            let section = WriteSection::open(&held, desc, &self.granules, &self.map);
            let Some((tail, tail_len)) = section.shrink(new_len) else {
                return desc.len();
            };
            (tail, (tail_len / PAGE_SIZE) as u32, desc.len())
        };
        let guard = epoch::pin();
        let space: &'static Space = Space::ready().expect("a region implies a space");
        guard.defer(move || space.release_range(tail_start, tail_pages));
        guard.flush();
        kept
    }

    /// Splits region `idx` at `at` bytes from its start (a multiple of its
    /// granule, strictly inside it) into two live regions; the second is
    /// returned as `(index, start, len)`. Nothing is committed, dropped or
    /// reprotected: both parts keep their pages.
    pub fn split(&self, idx: RegionIdx, at: usize) -> Result<(RegionIdx, usize, usize), Error> {
        for attempt in 0..4 {
            let held = self.lock();
            let desc = self.descs.get(idx);
            let (start, len) = (desc.start(), desc.len());
            if at == 0 || at >= len || at % desc.flags().granule() != 0 {
                return Err(Error::BadRange {
                    offset: at,
                    len: 0,
                    region_len: len,
                    granule: desc.flags().granule(),
                });
            }
            let Some(tail_idx) = self.descs.alloc() else {
                drop(held);
                if attempt < 3 {
                    // Descriptors may be waiting out their grace period (P1:
                    // the lock is released).
                    epoch::pin().flush();
                    continue;
                }
                return Err(Error::TooManyRegions {
                    limit: self.descs.capacity(),
                });
            };
            let tail = self.descs.get(tail_idx);
            let section = WriteSection::open(&held, desc, &self.granules, &self.map);
            let tail_section = WriteSection::open(&held, tail, &self.granules, &self.map);
            section.split(&tail_section, tail_idx, start + at);
            drop(tail_section);
            drop(section);
            stats::add_live_regions(1);
            return Ok((tail_idx, start + at, len - at));
        }
        unreachable!("the last attempt returns")
    }

    /// Merges region `next`, which must start where region `idx` ends and
    /// have the same options (and lie in the same zone), into `idx`.
    /// Nothing is committed, dropped or reprotected. `next`'s descriptor is
    /// freed after a grace period.
    pub fn merge(&self, idx: RegionIdx, next: RegionIdx) -> Result<(), Error> {
        {
            let held = self.lock();
            let (desc, next_desc) = (self.descs.get(idx), self.descs.get(next));
            let end = desc.start() + desc.len();
            let mergeable = idx != next
                && desc.flags().live()
                && next_desc.flags().live()
                && next_desc.start() == end
                && desc.flags() == next_desc.flags()
                && desc.ahead_max() == next_desc.ahead_max()
                && core::ptr::eq(self.zone_of(desc.start()), self.zone_of(end));
            if !mergeable {
                return Err(Error::CannotMerge {
                    end,
                    next_start: next_desc.start(),
                });
            }
            let section = WriteSection::open(&held, desc, &self.granules, &self.map);
            let next_section = WriteSection::open(&held, next_desc, &self.granules, &self.map);
            section.merge(idx, &next_section);
            drop(next_section);
            drop(section);
            stats::add_live_regions(-1);
        }
        // P1: the lock is released before pinning. A fault handler may still
        // hold `next`'s index: it finds its sequence count changed, or the
        // descriptor dead, and the descriptor is reused only after this.
        let guard = epoch::pin();
        let space: &'static Space = Space::ready().expect("a region implies a space");
        guard.defer(move || space.free_descriptor(next));
        guard.flush();
        Ok(())
    }

    /// The end of a merged-away descriptor's grace period.
    fn free_descriptor(&self, idx: RegionIdx) {
        let _held = self.lock();
        self.descs.free(idx);
    }

    /// The live region that starts exactly at `start`: its index, length,
    /// granule and whether it is eager. Under the lock, so the answer holds
    /// until the caller's next writer call.
    pub fn region_starting_at(&self, start: usize) -> Option<(RegionIdx, usize, usize, bool)> {
        if !self.contains(start) {
            return None;
        }
        let _held = self.lock();
        let idx = self.map.lookup(start)?;
        let desc = self.descs.get(idx);
        let flags = desc.flags();
        (flags.live() && desc.start() == start)
            .then(|| (idx, desc.len(), flags.granule(), flags.eager()))
    }

    /// The plan a fault at `addr` would follow, for the classic path which
    /// holds the lock and so needs no snapshot validation.
    pub(crate) fn plan_locked(
        &self,
        idx: RegionIdx,
        addr: usize,
    ) -> Option<(CommitPlan, crate::descriptor::Snapshot)> {
        let desc = self.descs.get(idx);
        let snap = desc.snapshot()?;
        snap.contains(addr)
            .then(|| (CommitPlan::for_fault(&snap, &self.granules, addr), snap))
    }
}
