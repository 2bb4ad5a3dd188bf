//! Failure injection for tests (cargo feature `fault-injection`): makes
//! chosen system calls of the `sys` layer fail with a chosen `errno`, so
//! tests can show that every caller — the fault handler included — reports
//! or recovers instead of looping or losing data.
//!
//! Each [`Call`] kind has one plan: let `skip` calls through, then fail the
//! next `count` calls with `errno`, then let everything through again. The
//! plans are atomics only, so the check is async-signal-safe and may run in
//! the fault handler; plans are process-wide (tests that inject run in child
//! processes, or serially).
//!
//! Without the feature, `check` is an inline `Ok(())` and nothing here is
//! compiled: builds that users get carry no hook. The workspace's own test,
//! example and bench builds enable it (a dev-dependency feature), where it
//! costs one relaxed load per system call.
//!
//! Besides failures, tests can *hold* commits: while a hold is on, every
//! commit (the fault path's backend call, by any thread) waits before it
//! starts, with its granules locked `Committing` — the window in which
//! another thread's fault meets them — until the hold is lifted.
//!
//! Invariants:
//! - J1: `injected(call)` counts exactly the calls `check` failed.
//! - J2: a plan with `count == 0` never fails a call.

/// The system calls a plan can target. `mprotect` is split by direction:
/// revoking access (decommit, destroy, reverting a failed commit) must not
/// fail for spf's invariants to hold, so tests fail commits and revocations
/// separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// `mmap` of the reservation or of spf's tables.
    Mmap,
    /// `mprotect` that makes memory accessible (a commit).
    MprotectCommit,
    /// `mprotect` to `PROT_NONE` (decommit, destroy, revert).
    MprotectRevoke,
    /// `madvise` (discard, populate, huge pages, guard markers).
    Madvise,
    /// `userfaultfd()` and its `UFFDIO_API` handshake.
    Userfaultfd,
    /// `UFFDIO_REGISTER` of the userfaultfd zone.
    UffdRegister,
    /// `UFFDIO_COPY`: a commit under the userfaultfd backend.
    UffdCopy,
    /// `MADV_GUARD_REMOVE`: a commit under the guard backend (checked before
    /// the `madvise` plan).
    GuardRemove,
}

/// How many kinds of call a plan can target.
#[cfg(feature = "fault-injection")]
const CALLS: usize = Call::GuardRemove as usize + 1;

#[cfg(feature = "fault-injection")]
mod plan {
    use super::Call;
    use crate::sys::Errno;
    use core::sync::atomic::{AtomicI32, AtomicU64, Ordering::Relaxed};

    struct Plan {
        skip: AtomicU64,
        count: AtomicU64,
        errno: AtomicI32,
        injected: AtomicU64,
    }

    #[allow(clippy::declare_interior_mutable_const)] // a template for the array
    const IDLE: Plan = Plan {
        skip: AtomicU64::new(0),
        count: AtomicU64::new(0),
        errno: AtomicI32::new(0),
        injected: AtomicU64::new(0),
    };

    static PLANS: [Plan; super::CALLS] = [IDLE; super::CALLS];

    fn plan(call: Call) -> &'static Plan {
        &PLANS[call as usize]
    }

    /// Lets `skip` calls of `call` through, then fails the next `count`
    /// with `errno` (`u64::MAX`: until [`clear`]).
    pub fn fail(call: Call, errno: i32, skip: u64, count: u64) {
        let p = plan(call);
        // Relaxed throughout: a plan is set before the calls it targets are
        // made (by the same thread, or one it synchronises with through the
        // test's own means); no other memory hangs off these words.
        p.count.store(0, Relaxed);
        p.errno.store(errno, Relaxed);
        p.skip.store(skip, Relaxed);
        p.count.store(count, Relaxed);
    }

    /// Ends the plan for `call`; the calls after this succeed (J2).
    pub fn clear(call: Call) {
        plan(call).count.store(0, Relaxed);
    }

    /// How many calls of `call` were failed so far (J1).
    pub fn injected(call: Call) -> u64 {
        plan(call).injected.load(Relaxed)
    }

    /// Whether this call of `call` should fail. Async-signal-safe.
    pub fn check(call: Call) -> Result<(), Errno> {
        let p = plan(call);
        if p.count.load(Relaxed) == 0 {
            return Ok(());
        }
        let dec = |n: u64| n.checked_sub(1);
        if p.skip.fetch_update(Relaxed, Relaxed, dec).is_ok() {
            return Ok(());
        }
        let unlimited = |n: u64| {
            if n == u64::MAX {
                Some(n)
            } else {
                n.checked_sub(1)
            }
        };
        if p.count.fetch_update(Relaxed, Relaxed, unlimited).is_err() {
            return Ok(());
        }
        p.injected.fetch_add(1, Relaxed);
        Err(Errno(p.errno.load(Relaxed)))
    }
}

#[cfg(feature = "fault-injection")]
mod hold {
    use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    static HOLD: AtomicBool = AtomicBool::new(false);
    static HELD: AtomicU64 = AtomicU64::new(0);

    /// Holds every commit that starts from now on, until `hold_commits(false)`.
    pub fn hold_commits(on: bool) {
        // SeqCst: the test reads `held_commits` to know a commit is held;
        // no data hangs off these words otherwise.
        HOLD.store(on, Ordering::SeqCst);
    }

    /// How many commits are waiting at the hold now.
    pub fn held_commits() -> u64 {
        HELD.load(Ordering::SeqCst)
    }

    /// Waits while a hold is on. Async-signal-safe (atomics and
    /// `sched_yield`); signals are delivered while it waits.
    pub fn commit_hold_point() {
        if !HOLD.load(Ordering::Relaxed) {
            return;
        }
        HELD.fetch_add(1, Ordering::SeqCst);
        while HOLD.load(Ordering::SeqCst) {
            crate::sys::yield_now();
        }
        HELD.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(feature = "fault-injection")]
pub use hold::{held_commits, hold_commits};

#[cfg(feature = "fault-injection")]
pub(crate) use hold::commit_hold_point;

/// Without the feature no commit is ever held.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn commit_hold_point() {}

#[cfg(feature = "fault-injection")]
pub use plan::{clear, fail, injected};

#[cfg(feature = "fault-injection")]
pub(crate) use plan::check;

/// Without the feature no call ever fails here.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn check(_call: Call) -> Result<(), crate::sys::Errno> {
    Ok(())
}
