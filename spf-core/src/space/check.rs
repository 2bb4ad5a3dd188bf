//! The invariant checker: every structure of the space against the others
//! and against the kernel's page protections. For tests and debugging.

use super::Space;
use crate::backend;
use crate::granule::GranuleState;
use crate::stats;
use crate::sys::{self, PAGE_SIZE};
use core::sync::atomic::Ordering;

impl Space {
    /// Checks the invariants of every structure against each other. Takes
    /// the lock; meant for tests and debugging, with no fault in flight for
    /// the committed-bytes comparison.
    pub fn check_invariants(&self) -> Result<(), String> {
        let held = self.lock();
        let mut live_committed = 0usize;
        for idx in self.descs.used() {
            let desc = self.descs.get(idx);
            let flags = desc.flags();
            if !flags.live() {
                // Destroyed, and if it still has a length, in its grace
                // period: nothing may have committed any of it since.
                let (start, len, granule) = (desc.start(), desc.len(), flags.granule());
                let mut h = start;
                while h < start + len {
                    if self.granules.state(h) != GranuleState::Uncommitted || sys::probe_readable(h)
                    {
                        return Err(format!(
                            "destroyed region {idx}: granule {h:#x} is committed"
                        ));
                    }
                    h += granule;
                }
                continue;
            }
            let (start, end, granule) = (desc.start(), desc.start() + desc.len(), flags.granule());
            for probe in [start, end - 1, start + (end - start) / 2] {
                if self.map.lookup(probe) != Some(idx) {
                    return Err(format!("map does not name region {idx} at {probe:#x}"));
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
                            return Err(format!("granule {h:#x} is Committed but not readable"));
                        }
                    }
                    GranuleState::Committing => {
                        return Err(format!("granule {h:#x} left Committing"));
                    }
                    GranuleState::Uncommitted => {
                        if sys::probe_readable(h) {
                            return Err(format!("granule {h:#x} is Uncommitted but readable"));
                        }
                    }
                }
                h += granule;
            }
            if committed != desc.committed.load(Ordering::Relaxed) {
                return Err(format!(
                    "region {idx}: granules say {committed} bytes committed, descriptor says {}",
                    desc.committed.load(Ordering::Relaxed)
                ));
            }
            live_committed += committed;
        }
        let gauge = stats::stats().committed_bytes as usize;
        if gauge != live_committed {
            return Err(format!(
                "committed gauge {gauge} != {live_committed} committed in live regions"
            ));
        }
        let mut bad = None;
        for zone in self.zones() {
            zone.extents(&held).for_each_free(|page, pages| {
                let start = zone.addr_of(page);
                let last = start + (pages as usize - 1) * PAGE_SIZE;
                for probe in [start, last] {
                    if self.map.lookup(probe).is_some() {
                        bad = Some(format!("free page {probe:#x} is in the map"));
                    } else if self.granules.state(probe) != GranuleState::Uncommitted {
                        bad = Some(format!("free page {probe:#x} has a granule state"));
                    } else if sys::probe_readable(probe) {
                        bad = Some(format!("free page {probe:#x} is accessible"));
                    }
                }
            });
        }
        bad.map_or(Ok(()), Err)
    }
}
