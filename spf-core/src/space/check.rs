//! The invariant checker: every structure of the space against the others
//! and against the kernel's page protections. For tests and debugging.
//!
//! The walk runs under the space lock and allocates nothing there: it
//! records the first broken invariant as a [`Violation`] (plain numbers)
//! and formats the message only after the lock is released. With
//! `SpfAlloc` as the global allocator, `format!` may need the space lock
//! itself (a new segment), so formatting under it would deadlock exactly
//! when there is something to report.

use super::Space;
use crate::backend;
use crate::granule::GranuleState;
use crate::map::RegionIdx;
use crate::stats;
use crate::sys::{self, PAGE_SIZE};
use core::fmt;
use core::sync::atomic::Ordering;

/// The most granules of one destroyed region whose page protection the
/// checker probes (it reads every granule's state).
const DEAD_PROBES: usize = 1024;

/// The first broken invariant the walk found: numbers only, so it is
/// recorded under the lock without allocating.
#[derive(Clone, Copy, Debug)]
enum Violation {
    DestroyedCommitted {
        idx: RegionIdx,
        granule: usize,
    },
    NotInMap {
        idx: RegionIdx,
        addr: usize,
    },
    CommittedUnreadable {
        granule: usize,
    },
    LeftCommitting {
        granule: usize,
    },
    UncommittedReadable {
        granule: usize,
    },
    CommittedBytes {
        idx: RegionIdx,
        granules: usize,
        desc: usize,
    },
    Gauge {
        gauge: usize,
        live: usize,
    },
    FreeInMap {
        page: usize,
    },
    FreeHasState {
        page: usize,
    },
    FreeAccessible {
        page: usize,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Violation::DestroyedCommitted { idx, granule } => {
                write!(
                    f,
                    "destroyed region {idx}: granule {granule:#x} is committed"
                )
            }
            Violation::NotInMap { idx, addr } => {
                write!(f, "map does not name region {idx} at {addr:#x}")
            }
            Violation::CommittedUnreadable { granule } => {
                write!(f, "granule {granule:#x} is Committed but not readable")
            }
            Violation::LeftCommitting { granule } => {
                write!(f, "granule {granule:#x} left Committing")
            }
            Violation::UncommittedReadable { granule } => {
                write!(f, "granule {granule:#x} is Uncommitted but readable")
            }
            Violation::CommittedBytes {
                idx,
                granules,
                desc,
            } => write!(
                f,
                "region {idx}: granules say {granules} bytes committed, descriptor says {desc}"
            ),
            Violation::Gauge { gauge, live } => write!(
                f,
                "committed gauge {gauge} != {live} committed in live regions"
            ),
            Violation::FreeInMap { page } => write!(f, "free page {page:#x} is in the map"),
            Violation::FreeHasState { page } => {
                write!(f, "free page {page:#x} has a granule state")
            }
            Violation::FreeAccessible { page } => {
                write!(f, "free page {page:#x} is accessible")
            }
        }
    }
}

impl Space {
    /// Checks the invariants of every structure against each other. Takes
    /// the lock; meant for tests and debugging, with no fault in flight for
    /// the committed-bytes comparison.
    pub fn check_invariants(&self) -> Result<(), String> {
        // The lock is released when `walk` returns; only then format.
        self.walk_invariants().map_err(|v| v.to_string())
    }

    /// The walk itself, under the lock: allocates nothing.
    fn walk_invariants(&self) -> Result<(), Violation> {
        let held = self.lock();
        let mut live_committed = 0usize;
        for idx in self.descs.used() {
            let desc = self.descs.get(idx);
            let flags = desc.flags();
            if !flags.live() {
                // Destroyed, and if it still has a length, in its grace
                // period: nothing may have committed any of it since.
                // Every granule word is read; the kernel is asked (four
                // system calls a probe) about at most `DEAD_PROBES` granules
                // spread over the range: the whole range was revoked by one
                // `drop_pages`, and a 256 GiB region of 4 KiB granules would
                // otherwise take minutes.
                let (start, len, granule) = (desc.start(), desc.len(), flags.granule());
                let granules = len / granule;
                let stride = granules.div_ceil(DEAD_PROBES).max(1);
                for i in 0..granules {
                    let h = start + i * granule;
                    let probe = i % stride == 0 || i + 1 == granules;
                    if self.granules.state(h) != GranuleState::Uncommitted
                        || (probe && sys::probe_readable(h))
                    {
                        return Err(Violation::DestroyedCommitted { idx, granule: h });
                    }
                }
                continue;
            }
            let (start, end, granule) = (desc.start(), desc.start() + desc.len(), flags.granule());
            for probe in [start, end - 1, start + (end - start) / 2] {
                if self.map.lookup(probe) != Some(idx) {
                    return Err(Violation::NotInMap { idx, addr: probe });
                }
            }
            let mut committed = 0;
            let mut h = start;
            while h < end {
                match self.granules.state(h) {
                    GranuleState::Committed => {
                        committed += granule;
                        // A purge drops the pages of committed granules in
                        // the userfaultfd zone; the next touch refills them.
                        if !backend::missing_page_possible(h) && !sys::probe_readable(h) {
                            return Err(Violation::CommittedUnreadable { granule: h });
                        }
                    }
                    GranuleState::Committing => {
                        return Err(Violation::LeftCommitting { granule: h });
                    }
                    GranuleState::Uncommitted => {
                        if sys::probe_readable(h) {
                            return Err(Violation::UncommittedReadable { granule: h });
                        }
                    }
                }
                h += granule;
            }
            if committed != desc.committed.load(Ordering::Relaxed) {
                return Err(Violation::CommittedBytes {
                    idx,
                    granules: committed,
                    desc: desc.committed.load(Ordering::Relaxed),
                });
            }
            live_committed += committed;
        }
        let gauge = stats::stats().committed_bytes as usize;
        if gauge != live_committed {
            return Err(Violation::Gauge {
                gauge,
                live: live_committed,
            });
        }
        let mut bad = None;
        for zone in self.zones() {
            zone.extents(&held).for_each_free(|page, pages| {
                let start = zone.addr_of(page);
                let last = start + (pages as usize - 1) * PAGE_SIZE;
                for probe in [start, last] {
                    if self.map.lookup(probe).is_some() {
                        bad = Some(Violation::FreeInMap { page: probe });
                    } else if self.granules.state(probe) != GranuleState::Uncommitted {
                        bad = Some(Violation::FreeHasState { page: probe });
                    } else if sys::probe_readable(probe) {
                        bad = Some(Violation::FreeAccessible { page: probe });
                    }
                }
            });
        }
        bad.map_or(Ok(()), Err)
    }
}
