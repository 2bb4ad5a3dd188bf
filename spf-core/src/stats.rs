//! The one list of statistics: fault counters named after the kernel's
//! `pagefault:spf_*` perf events, and the committed-bytes gauges.
//!
//! Counters are sharded by CPU: each CPU adds to its own cache line with a
//! relaxed `fetch_add`, so counting never contends. [`stats`] sums the shards;
//! the sum is not an atomic snapshot across counters, which is fine for
//! counters that only grow.
//!
//! The committed-bytes gauge is one shared atomic: it changes only next to an
//! `mprotect` or `madvise` call (microseconds each), so one contended atomic
//! add per commit is lost in the noise, and a single word gives an exact
//! peak with `fetch_max`.
//!
//! Invariants:
//! - I1: `faults == spf + classic + fatal` once no fault is in flight
//!   (every fault in our space ends in exactly one of those).
//! - I2: everything here is a plain atomic in a `static`: safe to update from
//!   the fault handler.

use crate::backend::{self, Backend};
use crate::sys;
use core::fmt;
use core::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// One counted event.
#[derive(Clone, Copy, Debug)]
#[repr(usize)]
pub enum Counter {
    /// Every fault inside our reservation.
    Faults,
    /// Faults completed on the speculative path.
    Spf,
    /// Faults completed on the classic path (under the space lock).
    Classic,
    /// Faults that ended the process (freed region, forbidden access).
    Fatal,
    /// Speculation aborted: the region changed under the fault.
    VmaChanged,
    /// The granule was being committed by another fault.
    PteLock,
    /// The region does not allow speculation.
    VmaNotsup,
    /// The access is not allowed by the region (checked again under the lock).
    VmaAccess,
    /// The per-CPU in-flight budget was spent.
    Cap,
    /// `mprotect` calls made by spf.
    Mprotect,
    /// Faults that committed more than their own granule (commit-ahead).
    CommitAhead,
    /// `UFFDIO_COPY` calls made by spf (the `uffd` backend's commits).
    UffdCopy,
    /// `MADV_GUARD_REMOVE` calls made by spf (the `guard` backend's commits).
    GuardRemove,
    /// Bytes that faults allocated or populated beyond the faulting page
    /// (what the per-CPU cap bounds), summed.
    AheadBytes,
}

const COUNTERS: usize = Counter::AheadBytes as usize + 1;
const SHARDS: usize = 64;

#[repr(align(128))]
struct Shard([AtomicU64; COUNTERS]);

static SHARD: [Shard; SHARDS] = [const { Shard([const { AtomicU64::new(0) }; COUNTERS]) }; SHARDS];
static COMMITTED: AtomicI64 = AtomicI64::new(0);
static PEAK_COMMITTED: AtomicU64 = AtomicU64::new(0);
static MAX_INFLIGHT_BYTES: AtomicU64 = AtomicU64::new(0);
static MAX_INFLIGHT_FAULTS: AtomicU64 = AtomicU64::new(0);
static LIVE_REGIONS: AtomicI64 = AtomicI64::new(0);

/// Adds one to `counter` in `cpu`'s shard. Async-signal-safe.
#[inline]
pub(crate) fn count_on(cpu: usize, counter: Counter) {
    SHARD[cpu % SHARDS].0[counter as usize].fetch_add(1, Relaxed);
}

/// Adds one to `counter` in the current CPU's shard. Async-signal-safe.
#[inline]
pub(crate) fn count(counter: Counter) {
    count_on(sys::current_cpu(), counter);
}

/// Adds `n` to `counter` in the current CPU's shard. Async-signal-safe.
#[inline]
pub(crate) fn add(counter: Counter, n: u64) {
    if n > 0 {
        SHARD[sys::current_cpu() % SHARDS].0[counter as usize].fetch_add(n, Relaxed);
    }
}

/// Records `bytes` newly committed (negative: decommitted).
#[inline]
pub(crate) fn add_committed(bytes: i64) {
    let now = COMMITTED.fetch_add(bytes, Relaxed) + bytes;
    if bytes > 0 {
        PEAK_COMMITTED.fetch_max(now as u64, Relaxed);
    }
}

/// Records what one CPU has in flight right after a fault took its slot.
#[inline]
pub(crate) fn note_inflight(bytes: u64, faults: u64) {
    MAX_INFLIGHT_BYTES.fetch_max(bytes, Relaxed);
    MAX_INFLIGHT_FAULTS.fetch_max(faults, Relaxed);
}

pub(crate) fn add_live_regions(n: i64) {
    LIVE_REGIONS.fetch_add(n, Relaxed);
}

/// Resets the peak gauges (peak committed, most in flight) to their current
/// values, so a program or a test can measure one phase.
pub fn reset_peaks() {
    PEAK_COMMITTED.store(COMMITTED.load(Relaxed).max(0) as u64, Relaxed);
    MAX_INFLIGHT_BYTES.store(0, Relaxed);
    MAX_INFLIGHT_FAULTS.store(0, Relaxed);
}

/// A copy of the counters and gauges at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// The commit backend in use.
    pub backend: Backend,
    /// Faults inside spf's reservation.
    pub faults: u64,
    /// Faults completed speculatively, without the space lock.
    pub spf: u64,
    /// Faults completed on the classic path, under the space lock.
    pub classic: u64,
    /// Faults that ended the process.
    pub fatal: u64,
    /// Speculative faults aborted because the region changed.
    pub spf_vma_changed: u64,
    /// Speculative faults that found their granule being committed.
    pub spf_pte_lock: u64,
    /// Faults in regions that do not allow speculation.
    pub spf_vma_notsup: u64,
    /// Speculative faults whose access the region forbids.
    pub spf_vma_access: u64,
    /// Speculative faults that found their CPU's budget spent.
    pub spf_cap: u64,
    /// Faults that committed granules ahead of the faulting one.
    pub commit_ahead: u64,
    /// `mprotect` calls made by spf.
    pub mprotect_calls: u64,
    /// `UFFDIO_COPY` calls made by spf.
    pub uffd_copy_calls: u64,
    /// `MADV_GUARD_REMOVE` calls made by spf.
    pub guard_remove_calls: u64,
    /// Bytes faults allocated (or populated) beyond the faulting page: the
    /// speculative allocation ahead of touch that the per-CPU cap bounds.
    pub ahead_bytes: u64,
    /// Bytes committed now (accessible in live regions).
    pub committed_bytes: u64,
    /// The most bytes committed at once.
    pub peak_committed_bytes: u64,
    /// The most bytes of commit-ahead/populate in flight on one CPU.
    pub max_inflight_bytes: u64,
    /// The most speculative faults in flight on one CPU.
    pub max_inflight_faults: u64,
    /// Regions alive now.
    pub live_regions: u64,
}

/// Sums the shards. Never allocates.
pub fn stats() -> Stats {
    let mut sum = [0u64; COUNTERS];
    for shard in &SHARD {
        for (total, counter) in sum.iter_mut().zip(&shard.0) {
            *total += counter.load(Relaxed);
        }
    }
    Stats {
        backend: backend::active(),
        faults: sum[Counter::Faults as usize],
        spf: sum[Counter::Spf as usize],
        classic: sum[Counter::Classic as usize],
        fatal: sum[Counter::Fatal as usize],
        spf_vma_changed: sum[Counter::VmaChanged as usize],
        spf_pte_lock: sum[Counter::PteLock as usize],
        spf_vma_notsup: sum[Counter::VmaNotsup as usize],
        spf_vma_access: sum[Counter::VmaAccess as usize],
        spf_cap: sum[Counter::Cap as usize],
        commit_ahead: sum[Counter::CommitAhead as usize],
        mprotect_calls: sum[Counter::Mprotect as usize],
        uffd_copy_calls: sum[Counter::UffdCopy as usize],
        guard_remove_calls: sum[Counter::GuardRemove as usize],
        ahead_bytes: sum[Counter::AheadBytes as usize],
        committed_bytes: COMMITTED.load(Relaxed).max(0) as u64,
        peak_committed_bytes: PEAK_COMMITTED.load(Relaxed),
        max_inflight_bytes: MAX_INFLIGHT_BYTES.load(Relaxed),
        max_inflight_faults: MAX_INFLIGHT_FAULTS.load(Relaxed),
        live_regions: LIVE_REGIONS.load(Relaxed).max(0) as u64,
    }
}

impl Stats {
    /// The counters accumulated since `earlier`; gauges keep their current
    /// values. For measuring one phase of a program.
    pub fn since(&self, earlier: &Stats) -> Stats {
        Stats {
            faults: self.faults - earlier.faults,
            spf: self.spf - earlier.spf,
            classic: self.classic - earlier.classic,
            fatal: self.fatal - earlier.fatal,
            spf_vma_changed: self.spf_vma_changed - earlier.spf_vma_changed,
            spf_pte_lock: self.spf_pte_lock - earlier.spf_pte_lock,
            spf_vma_notsup: self.spf_vma_notsup - earlier.spf_vma_notsup,
            spf_vma_access: self.spf_vma_access - earlier.spf_vma_access,
            spf_cap: self.spf_cap - earlier.spf_cap,
            commit_ahead: self.commit_ahead - earlier.commit_ahead,
            mprotect_calls: self.mprotect_calls - earlier.mprotect_calls,
            uffd_copy_calls: self.uffd_copy_calls - earlier.uffd_copy_calls,
            guard_remove_calls: self.guard_remove_calls - earlier.guard_remove_calls,
            ahead_bytes: self.ahead_bytes - earlier.ahead_bytes,
            ..*self
        }
    }
}

/// `perf stat` style, one counter per line.
impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            " Performance counter stats for spf (commit backend: {}):",
            self.backend
        )?;
        let rows: [(u64, &str); 19] = [
            (self.faults, "faults"),
            (self.spf, "spf"),
            (self.classic, "classic"),
            (self.fatal, "fatal"),
            (self.spf_pte_lock, "pagefault:spf_pte_lock"),
            (self.spf_vma_changed, "pagefault:spf_vma_changed"),
            (self.spf_vma_notsup, "pagefault:spf_vma_notsup"),
            (self.spf_vma_access, "pagefault:spf_vma_access"),
            (self.spf_cap, "pagefault:spf_cap"),
            (self.commit_ahead, "commit_ahead"),
            (self.mprotect_calls, "mprotect"),
            (self.uffd_copy_calls, "uffdio_copy"),
            (self.guard_remove_calls, "madv_guard_remove"),
            (self.ahead_bytes, "bytes_allocated_ahead"),
            (self.committed_bytes, "bytes_committed"),
            (self.peak_committed_bytes, "bytes_committed_peak"),
            (self.max_inflight_bytes, "inflight_bytes_max_per_cpu"),
            (self.max_inflight_faults, "inflight_faults_max_per_cpu"),
            (self.live_regions, "regions"),
        ];
        for (value, name) in rows {
            writeln!(f, "{value:>16}      {name}")?;
        }
        Ok(())
    }
}

/// Prints the counters to standard error; registered with `atexit` when
/// `SPF_STATS=1`.
pub(crate) extern "C" fn print_at_exit() {
    let mut w = crate::report::StackWriter::<2048>::new();
    let _ = fmt::Write::write_fmt(&mut w, format_args!("\n{}", stats()));
    w.flush_to_stderr();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_every_counter() {
        let s = Stats {
            faults: 7,
            spf_vma_changed: 3,
            ..Stats::default()
        };
        let text = s.to_string();
        assert!(text.contains("               7      faults"), "{text}");
        assert!(text.contains("3      pagefault:spf_vma_changed"), "{text}");
        assert!(text.contains("pagefault:spf_cap"), "{text}");
    }

    #[test]
    fn since_subtracts_counters_and_keeps_gauges() {
        let a = Stats {
            faults: 10,
            spf: 4,
            committed_bytes: 100,
            ..Stats::default()
        };
        let b = Stats {
            faults: 25,
            spf: 10,
            committed_bytes: 50,
            ..Stats::default()
        };
        let d = b.since(&a);
        assert_eq!((d.faults, d.spf, d.committed_bytes), (15, 6, 50));
    }
}
