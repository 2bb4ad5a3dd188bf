//! `InflightBudget`: the per-CPU cap on speculative allocation in flight —
//! the answer to the review's worry that concurrent speculative faults
//! over-allocate.
//!
//! Every speculative fault holds a slot on the CPU it started on from
//! before it locks a granule until it has published the result. The slot
//! carries a *charge*: the bytes the fault commits or populates beyond what
//! the faulting access itself needs (commit-ahead granules, and with
//! populate every page past the faulting one). A charge is admitted only if
//! the CPU's in-flight bytes stay within the cap.
//!
//! The slots also let `fork()` wait for speculation to drain: the prepare
//! handler sets `frozen`, then waits for every slot's fault count to reach
//! zero; a fault that takes a slot and then sees `frozen` gives it back and
//! goes classic (where the fork holds the space lock).
//!
//! Invariants:
//! - C1: for every CPU, `bytes <= cap` at all times (admission is a CAS
//!   that checks the sum before it publishes it).
//! - C2: `faults` counts the slots held on that CPU; after `frozen` is set
//!   and seen zero on every CPU, no fault holds a granule lock.

use crate::primitive::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crate::stats;

#[cfg(not(loom))]
const CPUS: usize = 256;
/// A model has at most two CPUs; fewer atomics keep each execution small.
#[cfg(loom)]
const CPUS: usize = 2;

#[repr(align(128))]
struct CpuBudget {
    bytes: AtomicU64,
    faults: AtomicU64,
}

#[cfg(not(loom))]
static BUDGET: [CpuBudget; CPUS] = [const {
    CpuBudget {
        bytes: AtomicU64::new(0),
        faults: AtomicU64::new(0),
    }
}; CPUS];
#[cfg(not(loom))]
static FROZEN: AtomicBool = AtomicBool::new(false);

// Under loom, atomics belong to one execution: the same statics, made
// afresh for each (see `primitive`).
#[cfg(loom)]
loom::lazy_static! {
    static ref BUDGET: [CpuBudget; CPUS] = core::array::from_fn(|_| CpuBudget {
        bytes: AtomicU64::new(0),
        faults: AtomicU64::new(0),
    });
    static ref FROZEN: AtomicBool = AtomicBool::new(false);
}

/// A speculative fault's slot on one CPU; released on drop.
pub struct InflightSlot {
    cpu: usize,
    charge: u64,
}

/// Why a slot was not given.
pub enum SlotRefused {
    /// A fork is in progress: go classic.
    Frozen,
}

impl InflightSlot {
    /// Takes a slot with no charge on `cpu`.
    pub fn take(cpu: usize) -> Result<InflightSlot, SlotRefused> {
        let b = &BUDGET[cpu % CPUS];
        // SeqCst pairs with the SeqCst store of FROZEN in `freeze` (C2):
        // either the fork sees our count, or we see the freeze.
        let faults = b.faults.fetch_add(1, Ordering::SeqCst) + 1;
        if FROZEN.load(Ordering::SeqCst) {
            b.faults.fetch_sub(1, Ordering::SeqCst);
            return Err(SlotRefused::Frozen);
        }
        // Relaxed: only a statistic.
        stats::note_inflight(b.bytes.load(Ordering::Relaxed), faults);
        Ok(InflightSlot {
            cpu: cpu % CPUS,
            charge: 0,
        })
    }

    /// Adds `bytes` to this slot's charge if the CPU stays within `cap` (C1).
    pub fn try_charge(&mut self, bytes: u64, cap: u64) -> bool {
        if bytes == 0 {
            return true;
        }
        let b = &BUDGET[self.cpu];
        let mut cur = b.bytes.load(Ordering::Relaxed);
        loop {
            let Some(next) = cur.checked_add(bytes).filter(|&n| n <= cap) else {
                return false;
            };
            // Relaxed: the budget guards no other memory; only its own
            // value matters, and the CAS makes the check-and-add atomic.
            match b
                .bytes
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.charge += bytes;
                    stats::note_inflight(next, b.faults.load(Ordering::Relaxed));
                    return true;
                }
                Err(seen) => cur = seen,
            }
        }
    }
}

impl Drop for InflightSlot {
    fn drop(&mut self) {
        let b = &BUDGET[self.cpu];
        if self.charge > 0 {
            // Relaxed: as in `try_charge`, the budget guards no other memory.
            b.bytes.fetch_sub(self.charge, Ordering::Relaxed);
        }
        b.faults.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Stops new speculative faults and waits for those in flight (fork prepare).
pub fn freeze() {
    FROZEN.store(true, Ordering::SeqCst);
    for b in BUDGET.iter() {
        let mut spins = 0;
        while b.faults.load(Ordering::SeqCst) != 0 {
            crate::granule::backoff(&mut spins);
        }
    }
}

/// Lets speculation run again (fork parent and child).
pub fn thaw() {
    FROZEN.store(false, Ordering::SeqCst);
}

/// What `cpu` has in flight now: (bytes charged, slots held). For the
/// model's final checks (C1, C2); loom builds only.
#[cfg(loom)]
#[allow(dead_code)] // used by tests/loom_protocol.rs, not by the library
pub fn in_flight(cpu: usize) -> (u64, u64) {
    let b = &BUDGET[cpu % CPUS];
    (
        b.bytes.load(Ordering::SeqCst),
        b.faults.load(Ordering::SeqCst),
    )
}

// Not under loom: loom's atomics work only inside a model.
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn charge_respects_the_cap() {
        // CPU index far from any real CPU, so parallel tests do not share it.
        let cpu = CPUS - 1;
        let mut a = InflightSlot::take(cpu).ok().unwrap();
        let mut b = InflightSlot::take(cpu).ok().unwrap();
        assert!(a.try_charge(600, 1000));
        assert!(!b.try_charge(600, 1000));
        assert!(b.try_charge(400, 1000));
        drop(a);
        assert!(b.try_charge(600, 1000));
        drop(b);
        assert_eq!(BUDGET[cpu].bytes.load(Ordering::Relaxed), 0);
        assert_eq!(BUDGET[cpu].faults.load(Ordering::Relaxed), 0);
    }
}
