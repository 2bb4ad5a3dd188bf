//! spf-core: regions of lazily committed memory, the epoch-protected region
//! map, and the speculative `SIGSEGV` commit path — a user-space port of the
//! Linux speculative page fault series.
//!
//! A process has one *space*: a large `PROT_NONE` reservation from which
//! [`Region`]s are carved. A region's granules are committed on first touch
//! by spf's `SIGSEGV` handler, which finds the region without a lock,
//! validates it with a per-region sequence count and commits through a
//! backend chosen at start (userfaultfd's `UFFDIO_COPY`, guard markers, or
//! `mprotect`; see [`Backend`]), falling back to a classic path under the
//! space lock when it sees a concurrent change. See `docs/ARCHITECTURE.md` for the map of the
//! modules and the path of one fault.
//!
//! ```
//! use spf_core::{stats, Region, RegionOptions};
//! let before = stats();
//! let r = Region::reserve(4 << 20, RegionOptions::default().granule(64 << 10)).unwrap();
//! // SAFETY: inside the live region.
//! unsafe { r.as_ptr().add(100_000).write(1) };
//! let after = stats().since(&before);
//! assert!(after.faults >= 1);
//! ```
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "spf supports Linux only: its fault handler relies on Linux's signals, userfaultfd, guard \
     markers and /proc. On other systems use the platform's allocator, jemalloc or mimalloc."
);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!(
    "spf supports x86-64 (tested) and aarch64 (untested) only: its signal handler reads \
     architecture-specific fault details and its tables assume 64-bit addresses."
);

mod backend;
mod cap;
mod chain;
mod commit;
mod descriptor;
mod epoch;
mod error;
mod extent;
mod fault;
mod granule;
mod handler_guard;
mod inject;
mod lock;
mod map;
mod options;
mod primitive;
mod region;
mod report;
mod seq;
mod signal;
mod space;
mod startup;
mod stats;
mod sys;

pub use backend::{set_backend, Backend, BackendChoice};
pub use error::Error;
pub use handler_guard::{in_fault_handler, HandlerAllocGuard};
pub use options::{
    cap, cap_default, cap_policy, mode, set_cap, set_cap_policy, set_mode, CapPolicy, Mode,
};
pub use region::{purge_pages, region_at, Granule, Protection, Region, RegionInfo, RegionOptions};
pub use stats::{reset_peaks, stats, Stats};
pub use sys::{monotonic_ns, resident_bytes, Errno, PAGE_SIZE};

// Plumbing for spf's other crates and examples (reading `SPF_*` without
// allocating, writing a message without allocating, parsing "64k"): public
// so that they can share it, hidden because it is not an API for users.
#[doc(hidden)]
pub use options::parse_size;
#[doc(hidden)]
pub use report::emit as report;
#[doc(hidden)]
pub use sys::env as getenv;

/// Starts the space now (reads `SPF_*`, reserves address space, installs
/// the handler) instead of on the first `Region::reserve`.
pub fn init() -> Result<(), Error> {
    space::Space::get().map(|_| ())
}

/// Checks that the calling thread can take spf's lazy commits: that it
/// does not block `SIGSEGV`, nor `SIGBUS` under the userfaultfd backend
/// (starting the space first if needed, to know the backend).
///
/// A thread that blocks them (servers often `sigfillset` and
/// `pthread_sigmask` in worker threads) is killed by the kernel the first
/// time it touches an uncommitted granule of lazy memory — a [`Region`],
/// an `Arena`, or `SpfAlloc::lazy()` memory: the kernel forces a blocked
/// synchronous fault signal to its default action before any handler can
/// run, so spf cannot report it then. Call this where such a thread starts
/// (or in a debug assertion); the error says what to do. Memory committed
/// before the touch ([`Region::commit`], `Arena::prefault`, blocks from
/// `SpfAlloc::new()`) is safe in any thread.
pub fn check_signal_mask() -> Result<(), Error> {
    space::Space::get()?;
    let blocked = |sig| signal::blocked_fault_signal(sig);
    let signal = match (blocked(libc::SIGSEGV), blocked(libc::SIGBUS)) {
        (false, false) => return Ok(()),
        (true, true) => "SIGSEGV and SIGBUS",
        (true, false) => "SIGSEGV",
        (false, true) => "SIGBUS",
    };
    Err(Error::FaultSignalBlocked { signal })
}

/// The commit backend in use, once the space has started (`None` before).
pub fn backend() -> Option<Backend> {
    space::Space::ready().map(|_| backend::active())
}

/// Checks every structure against the others (map, descriptors, granule
/// states, free ranges, committed bytes, page protections). For tests and
/// debugging; call it with no fault in flight.
pub fn check_invariants() -> Result<(), String> {
    space::Space::get()
        .map_err(|e| e.to_string())?
        .check_invariants()
}

/// Puts spf's fault handler back in front of the process's `SIGSEGV` and
/// `SIGBUS` actions if a handler installed since replaced it (chaining to
/// that handler, as at start-up). Region creation does this at most every
/// 10 ms; an allocator calls this before it hands out lazy memory that no
/// fault may miss — a reused lazy block, or one made right after the
/// program installed a handler. One `sigaction` query per signal; never
/// allocates.
pub fn ensure_fault_handler() {
    signal::ensure_installed_now();
}

/// Hooks for spf's own tests. Not part of the stable API.
#[doc(hidden)]
pub mod testing {
    #[cfg(debug_assertions)]
    pub use crate::handler_guard::set_allocate_in_handler;
    pub use crate::sys::probe_readable;

    /// Tries to end the grace period of regions destroyed so far: pins and
    /// flushes spf-core's epoch collector `rounds` times (see
    /// `epoch::flush`). Another thread that stays pinned holds it back.
    pub fn flush_epoch(rounds: usize) {
        crate::epoch::flush(rounds);
    }

    /// Failure injection into `mmap`, `mprotect` and `madvise` (feature
    /// `fault-injection`); see the `inject` module.
    #[cfg(feature = "fault-injection")]
    pub mod inject {
        pub use crate::inject::{clear, fail, held_commits, hold_commits, injected, Call};
    }

    /// Whether the calling thread holds the space lock now (false before
    /// the space starts): lets a test's allocator catch allocations made
    /// under it, which `SpfAlloc` could need the lock for.
    #[cfg(feature = "fault-injection")]
    pub fn space_lock_held_by_me() -> bool {
        crate::space::Space::ready().is_some_and(|s| s.lock.held_by(crate::sys::thread_id()))
    }

    /// Ahead-of-touch bytes in speculative commit calls, measured at the
    /// commit (see `commit::ahead_watch`): `(most at once over all CPUs,
    /// most in one call)`, and the reset of both.
    #[cfg(all(feature = "fault-injection", not(loom)))]
    pub use crate::commit::ahead_watch::{peaks as ahead_peaks, reset as reset_ahead_peaks};

    /// Adds `bytes` to the committed-bytes gauge without committing
    /// anything: breaks an invariant on purpose, so a test can watch
    /// `check_invariants` report it. Undo with `-bytes`.
    #[cfg(feature = "fault-injection")]
    pub fn skew_committed_gauge(bytes: i64) {
        crate::stats::add_committed(bytes);
    }

    /// Steps 2–3 of the fault path alone (map lookup, descriptor snapshot,
    /// bounds check), for measuring what a lookup costs.
    #[inline]
    pub fn lookup(addr: *const u8) -> bool {
        let Some(space) = crate::space::Space::ready() else {
            return false;
        };
        let addr = addr as usize;
        space.contains(addr)
            && space
                .map
                .lookup(addr)
                .and_then(|idx| space.descs.get(idx).snapshot())
                .is_some_and(|snap| snap.contains(addr))
    }
}
