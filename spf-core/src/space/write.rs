//! Write sections: what a region writer does to one region between making
//! its sequence count odd and even again, under the space lock.
//!
//! A [`WriteSection`] is the guard of steps 2–5 of the writer pattern (see
//! the `space` module docs): opening it makes `seq` odd (S1 — from then on
//! no speculative fault can start a commit in the region, S3), dropping it
//! makes `seq` even. Its methods lock the granule words of the range they
//! change, waiting for the faults committing there (G1), change the
//! kernel's view through `backend`, the descriptor and the map, and unlock
//! the words with their new states.
//!
//! This file needs nothing but the descriptor, the granule table, the map,
//! the backend and the counters — no extent allocator, no epoch, no signal
//! handler — so the loom model (`tests/loom_protocol.rs`) compiles it
//! unchanged and checks these very writers against racing faults.
//!
//! Invariant W1: a section is opened only with the space lock held (the
//! `SpaceGuard` borrow proves it) and on a descriptor of a region that is
//! live when the section opens.

use crate::backend::{self, Backend};
use crate::descriptor::RegionDesc;
use crate::granule::{GranuleState, GranuleTable};
use crate::lock::SpaceGuard;
use crate::map::{RegionIdx, RegionMap};
use crate::stats;
use crate::sys::{self, Errno, Prot};
use core::sync::atomic::Ordering;

/// One region's write section (W1).
pub(crate) struct WriteSection<'a> {
    desc: &'a RegionDesc,
    granules: &'a GranuleTable,
    map: &'a RegionMap,
}

impl<'a> WriteSection<'a> {
    /// Opens the section: `seq` becomes odd (S1).
    pub(crate) fn open(
        _held: &'a SpaceGuard<'_>,
        desc: &'a RegionDesc,
        granules: &'a GranuleTable,
        map: &'a RegionMap,
    ) -> WriteSection<'a> {
        desc.seq.write_begin();
        WriteSection {
            desc,
            granules,
            map,
        }
    }

    /// Drops the pages of `[from, to)` (granule aligned, inside the region)
    /// and makes the range fault to us again; the granules end
    /// `Uncommitted` and the committed bytes are given back.
    pub(crate) fn decommit(&self, from: usize, to: usize) {
        let granule = self.desc.flags().granule();
        let mut committed = 0;
        let mut h = from;
        while h < to {
            if self.granules.lock_settled(h) == GranuleState::Committed {
                committed += granule;
            }
            h += granule;
        }
        // Outside the protected zone a failed commit may have left pages in
        // `Uncommitted` granules (B2): always drop there.
        if committed > 0 || backend::at(from) != Backend::Mprotect {
            backend::drop_pages(from, to - from);
        }
        let mut h = from;
        while h < to {
            self.granules.unlock(h, GranuleState::Uncommitted);
            h += granule;
        }
        self.desc.committed.fetch_sub(committed, Ordering::Relaxed);
        stats::add_committed(-(committed as i64));
    }

    /// Destroys the region: everything decommitted, the range given its
    /// zone's protection back, out of the map, the descriptor dead. The
    /// range and descriptor wait out a grace period (the caller's part).
    pub(crate) fn destroy(self) {
        let (start, end) = (self.desc.start(), self.desc.start() + self.desc.len());
        self.decommit(start, end);
        self.restore_zone_protection(start, end);
        self.map.remove(start, end);
        self.desc.set_flags(self.desc.flags().dead());
    }

    /// Shrinks the region to `new_len` (rounded up to the granule, at least
    /// one): the tail is decommitted and leaves the map. Returns the tail
    /// `(start, len)`, or `None` if `new_len` does not shrink it.
    pub(crate) fn shrink(&self, new_len: usize) -> Option<(usize, usize)> {
        let granule = self.desc.flags().granule();
        let (start, len) = (self.desc.start(), self.desc.len());
        // A length that does not round (near `usize::MAX`) is no shrink.
        let new_len = new_len.max(1).checked_next_multiple_of(granule)?;
        if new_len >= len {
            return None;
        }
        self.decommit(start + new_len, start + len);
        self.restore_zone_protection(start + new_len, start + len);
        self.map.remove(start + new_len, start + len);
        self.desc.set_len(new_len);
        Some((start + new_len, len - new_len))
    }

    /// Splits the region at `at` (granule aligned, strictly inside it):
    /// `[at, end)` becomes the region of `tail`, a descriptor whose own
    /// section the caller has open (so a fault that read it earlier finds
    /// its sequence count changed). Nothing is committed, dropped or
    /// reprotected: granule states belong to addresses, so the tail's
    /// granules keep their states and pages, and only their committed bytes
    /// move to the tail's descriptor. Each tail granule is locked, waiting
    /// for a fault committing there (G1), so that fault's bytes are already
    /// in this region's count (`publish` accounts before it unlocks) and
    /// move with it. The tail gets this region's flags and commit-ahead.
    pub(crate) fn split(&self, tail: &WriteSection<'_>, tail_idx: RegionIdx, at: usize) {
        let flags = self.desc.flags();
        let granule = flags.granule();
        let (start, len) = (self.desc.start(), self.desc.len());
        debug_assert!(at > start && at < start + len && (at - start) % granule == 0);
        let mut committed = 0;
        let mut h = at;
        while h < start + len {
            let state = self.granules.lock_settled(h);
            if state == GranuleState::Committed {
                committed += granule;
            }
            self.granules.unlock(h, state);
            h += granule;
        }
        tail.desc
            .init(at, start + len - at, flags, self.desc.ahead_max());
        tail.desc.committed.store(committed, Ordering::Relaxed);
        self.desc.committed.fetch_sub(committed, Ordering::Relaxed);
        // M3: the tail's bounds are written before its id is published.
        self.map.insert(at, start + len, tail_idx);
        self.desc.set_len(at - start);
    }

    /// Merges `next` — the region starting where this one ends, with the
    /// same flags, whose own section the caller has open — into this one
    /// (`self_idx`): the range and its committed bytes move here, and
    /// `next`'s descriptor ends dead with no length (nothing of it is
    /// released: its range lives on in this region; the caller frees the
    /// descriptor after a grace period). As in `split`, nothing is
    /// committed, dropped or reprotected, and each of `next`'s granules is
    /// locked and settled so that a fault committing there has counted its
    /// bytes in `next` before they move.
    pub(crate) fn merge(&self, self_idx: RegionIdx, next: &WriteSection<'_>) {
        let granule = self.desc.flags().granule();
        let (start, len) = (self.desc.start(), self.desc.len());
        let (next_start, next_len) = (next.desc.start(), next.desc.len());
        debug_assert_eq!(start + len, next_start);
        debug_assert_eq!(self.desc.flags(), next.desc.flags());
        let mut committed = 0;
        let mut h = next_start;
        while h < next_start + next_len {
            let state = self.granules.lock_settled(h);
            if state == GranuleState::Committed {
                committed += granule;
            }
            self.granules.unlock(h, state);
            h += granule;
        }
        next.desc.committed.fetch_sub(committed, Ordering::Relaxed);
        self.desc.committed.fetch_add(committed, Ordering::Relaxed);
        // M3: the new bounds are written before this id is published over
        // the range.
        self.desc.set_len(len + next_len);
        self.map.insert(next_start, next_start + next_len, self_idx);
        next.desc.set_flags(next.desc.flags().dead());
        // Dead with no length: nothing of the range is in its grace period
        // (the invariant checker reads a dead descriptor's length so).
        next.desc.set_len(0);
    }

    /// Makes the region read-only or read/write; committed memory changes
    /// with it. On failure nothing changes: the flags stay as they were,
    /// and the pages already given the new protection get the old one back
    /// (if even that fails, flags and pages could disagree — a read-only
    /// region writable — so the process ends with a message).
    pub(crate) fn protect(&self, read_only: bool) -> Result<(), Errno> {
        let old = self.desc.flags();
        let flags = old.with_read_only(read_only);
        let (start, end) = (self.desc.start(), self.desc.start() + self.desc.len());
        // The flags change only once the pages have: inside the section no
        // fault can commit (S3), so nothing reads them meanwhile.
        if backend::at(start) != Backend::Mprotect {
            // Wait for the faults committing in the region, then change the
            // whole region at once: uncommitted pages stay missing or
            // guarded whatever their protection.
            let granule = flags.granule();
            let mut h = start;
            while h < end {
                let state = self.granules.lock_settled(h);
                self.granules.unlock(h, state);
                h += granule;
            }
            let changed = backend::protect_region(start, end, flags.prot()).unwrap_or(Ok(()));
            if let Err(errno) = changed {
                // mprotect may have changed part of the range before failing.
                if let Some(Err(again)) = backend::protect_region(start, end, old.prot()) {
                    self.fatal_protect(start, end, again);
                }
                return Err(errno);
            }
        } else if let Err((errno, reached)) = self.protect_runs(end, flags.prot()) {
            // Put back the runs up to and including the one that failed.
            if let Err((again, _)) = self.protect_runs(reached, old.prot()) {
                self.fatal_protect(start, reached, again);
            }
            return Err(errno);
        }
        self.desc.set_flags(flags);
        Ok(())
    }

    /// Protected zone: gives the committed runs of `[start, to)` protection
    /// `prot`, one `mprotect` per run (only committed runs are
    /// accessible). Stops at the first failure: `(errno, end of the run
    /// that failed)`.
    fn protect_runs(&self, to: usize, prot: Prot) -> Result<(), (Errno, usize)> {
        let granule = self.desc.flags().granule();
        let start = self.desc.start();
        let mut run_start = start;
        let mut at = start;
        while at <= to {
            let committed = at < to && self.granules.lock_settled(at) == GranuleState::Committed;
            if !committed {
                let mut failed = None;
                if at > run_start {
                    stats::count(stats::Counter::Mprotect);
                    failed = sys::protect(run_start, at - run_start, prot).err();
                    let mut h = run_start;
                    while h < at {
                        self.granules.unlock(h, GranuleState::Committed);
                        h += granule;
                    }
                }
                if at < to {
                    self.granules.unlock(at, GranuleState::Uncommitted);
                }
                if let Some(errno) = failed {
                    return Err((errno, at));
                }
                run_start = at + granule;
            }
            at += granule;
        }
        Ok(())
    }

    #[cold]
    fn fatal_protect(&self, from: usize, to: usize, errno: Errno) -> ! {
        crate::report::report!(
            "spf: fatal: a failed protect could not give [{from:#x}, {to:#x}) its old \
             protection back: mprotect failed with {errno}; the kernel's vm.max_map_count \
             may be exhausted\n"
        );
        sys::abort();
    }

    /// Gives `[from, to)`, leaving a read-only region, the protection of
    /// its zone back: in the lazy zone pages keep their protection after a
    /// decommit (they are missing or guarded), and the next region carved
    /// there must not inherit read-only pages.
    fn restore_zone_protection(&self, from: usize, to: usize) {
        if !self.desc.flags().read_only() {
            return;
        }
        if let Some(Err(errno)) = backend::protect_region(from, to, Prot::ReadWrite) {
            crate::report::report!(
                "spf: fatal: cannot make [{from:#x}, {to:#x}) writable again after a read-only \
                 region: mprotect failed with {errno}; the kernel's vm.max_map_count may be \
                 exhausted\n"
            );
            sys::abort();
        }
    }
}

impl Drop for WriteSection<'_> {
    /// Closes the section: `seq` becomes even (S1).
    fn drop(&mut self) {
        self.desc.seq.write_end();
    }
}
