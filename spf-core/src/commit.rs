//! The commit step shared by both fault paths: which granules a fault
//! commits (its own, plus commit-ahead), locking them, and the one backend
//! call (`mprotect`, `UFFDIO_COPY` or `MADV_GUARD_REMOVE`, see `backend`)
//! that makes them accessible.
//!
//! Commit-ahead works like readahead, but without per-stream state: a fault
//! whose granule directly follows `k` committed granules is continuing a
//! sequential run and commits `max(1, k)` granules (capped by the region's
//! limit), so a run grows 1, 1, 2, 4, 8, … granules per fault. Looking at
//! the granule states behind the fault, rather than at a "where did the
//! last fault end" hint, keeps several threads streaming through one region
//! from resetting each other's windows. A wrong guess costs memory or a
//! fault, never correctness: every granule is locked before it is committed
//! and the lock run stops at the first granule that is not `Uncommitted`
//! (docs/DESIGN.md: commit-ahead locks every granule it commits, all in one region,
//! before the one commit call).
//!
//! Invariant K1: a `LockedRun` owns the granule locks of `[head, head +
//! count × granule)`; dropping it without `publish` returns them to
//! `Uncommitted`, so no early return can leak a lock.

use crate::backend::{self, Backend};
use crate::descriptor::{RegionDesc, Snapshot};
use crate::granule::{GranuleState, GranuleTable};
use crate::stats::{self, Counter};
use crate::sys::{Errno, Prot, PAGE_SIZE};
use core::sync::atomic::Ordering::Relaxed;

/// What one fault intends to commit.
#[derive(Clone, Copy, Debug)]
pub struct CommitPlan {
    pub head: usize,
    pub granule: usize,
    pub count: usize,
    pub populate: bool,
    pub prot: Prot,
}

impl CommitPlan {
    /// The plan for a fault at `addr` in the region `snap` describes.
    pub fn for_fault(snap: &Snapshot, table: &GranuleTable, addr: usize) -> CommitPlan {
        let granule = snap.granule();
        let head = snap.head_of(addr);
        let mut count = 1;
        if snap.ahead_max > 1 {
            let before = (head - snap.start) / granule;
            let mut behind = 0;
            while behind < snap.ahead_max
                && behind < before
                && table.state(head - (behind + 1) * granule) == GranuleState::Committed
            {
                behind += 1;
            }
            count = behind
                .clamp(1, snap.ahead_max)
                .min((snap.end - head) / granule);
        }
        CommitPlan {
            head,
            granule,
            count,
            populate: snap.flags.populate(),
            prot: snap.flags.prot(),
        }
    }

    pub fn len(&self) -> usize {
        self.count * self.granule
    }

    /// Bytes committed or populated beyond what the faulting access needs:
    /// what the per-CPU cap bounds. Under userfaultfd a commit allocates
    /// every page of the run at once, so everything past the faulting page
    /// is memory allocated ahead of touch, as with populate. (The cap can
    /// shrink a plan to its own granule, never below: a granule is filled
    /// whole.)
    pub fn charge(&self) -> u64 {
        let beyond = if self.populate || backend::at(self.head) == Backend::Uffd {
            self.len() - PAGE_SIZE
        } else {
            self.len() - self.granule
        };
        beyond as u64
    }

    /// Only the faulting granule, nothing populated: the plan under the cap.
    pub fn shrink(&mut self) {
        self.count = 1;
        self.populate = false;
    }

    /// Locks the plan's granules for a fault: the first must be
    /// `Uncommitted` (else its state is returned); the run stops at the first
    /// later granule that is not.
    pub fn lock<'t>(&mut self, table: &'t GranuleTable) -> Result<LockedRun<'t>, GranuleState> {
        table.try_lock_uncommitted(self.head)?;
        let mut locked = 1;
        while locked < self.count
            && table
                .try_lock_uncommitted(self.head + locked * self.granule)
                .is_ok()
        {
            locked += 1;
        }
        self.count = locked;
        Ok(LockedRun {
            table,
            plan: *self,
            published: false,
        })
    }
}

/// The granule locks of one plan (K1).
pub struct LockedRun<'t> {
    table: &'t GranuleTable,
    pub plan: CommitPlan,
    published: bool,
}

impl LockedRun<'_> {
    /// Makes the run accessible with one backend call (plus populate if
    /// asked). On failure the granules go back to `Uncommitted` when the run
    /// is dropped; what the backend did part-way is its business (see
    /// `backend`: reverted under `mprotect`, kept for the retry otherwise).
    pub fn apply(&self) -> Result<(), Errno> {
        let p = &self.plan;
        #[cfg(all(feature = "fault-injection", not(loom)))]
        let _watch = ahead_watch::Watch::start(p);
        backend::commit(p.head, p.len(), p.prot, p.populate)
    }

    /// Publishes the run as committed and accounts it (D2).
    pub fn publish(mut self, desc: &RegionDesc) {
        let p = self.plan;
        // Account first: once unlocked, a decommit may subtract these bytes.
        desc.committed.fetch_add(p.len(), Relaxed);
        stats::add_committed(p.len() as i64);
        if p.count > 1 {
            stats::count(Counter::CommitAhead);
        }
        stats::add(Counter::AheadBytes, p.charge());
        for i in 0..p.count {
            self.table
                .unlock(p.head + i * p.granule, GranuleState::Committed);
        }
        self.published = true;
    }
}

impl Drop for LockedRun<'_> {
    fn drop(&mut self) {
        if !self.published {
            for i in 0..self.plan.count {
                self.table.unlock(
                    self.plan.head + i * self.plan.granule,
                    GranuleState::Uncommitted,
                );
            }
        }
    }
}

/// Test builds only (feature `fault-injection`): the bytes speculative
/// commits allocate ahead of touch, measured around the commit call itself
/// from the run actually locked — not from the cap's admission — so a test
/// can show the per-CPU cap holds rather than re-read the number the cap's
/// compare-and-swap wrote.
#[cfg(all(feature = "fault-injection", not(loom)))]
pub mod ahead_watch {
    use super::CommitPlan;
    use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

    /// Ahead bytes inside commit calls now, over all CPUs.
    static NOW: AtomicU64 = AtomicU64::new(0);
    /// The most `NOW` has been.
    static PEAK: AtomicU64 = AtomicU64::new(0);
    /// The most one commit call has carried.
    static PEAK_ONE: AtomicU64 = AtomicU64::new(0);

    /// One commit call's ahead bytes, counted until dropped.
    pub(crate) struct Watch(u64);

    impl Watch {
        /// Async-signal-safe: atomics only.
        pub(crate) fn start(plan: &CommitPlan) -> Watch {
            // What the cap bounds: the plan's charge, but for a plan of its
            // own granule alone (the cap shrinks a plan to that, never
            // below). The classic path holds the space lock and is not
            // capped; a speculative commit while some writer holds it is
            // left out too (an undercount, never an overcount).
            let capped = plan.count > 1 || plan.populate;
            let classic = crate::space::Space::ready().is_some_and(|s| s.lock.is_locked());
            let bytes = if capped && !classic { plan.charge() } else { 0 };
            if bytes > 0 {
                // Relaxed: counters read after the threads are joined.
                PEAK_ONE.fetch_max(bytes, Relaxed);
                let now = NOW.fetch_add(bytes, Relaxed) + bytes;
                PEAK.fetch_max(now, Relaxed);
            }
            Watch(bytes)
        }
    }

    impl Drop for Watch {
        fn drop(&mut self) {
            if self.0 > 0 {
                NOW.fetch_sub(self.0, Relaxed);
            }
        }
    }

    /// `(most in commit calls at once over all CPUs, most in one call)`.
    pub fn peaks() -> (u64, u64) {
        (PEAK.load(Relaxed), PEAK_ONE.load(Relaxed))
    }

    /// Starts the peaks over.
    pub fn reset() {
        PEAK.store(0, Relaxed);
        PEAK_ONE.store(0, Relaxed);
    }
}
