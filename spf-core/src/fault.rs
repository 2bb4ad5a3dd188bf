//! The fault path: from a faulting address to a committed granule, or to a
//! verdict that the fault is not ours or is fatal.
//!
//! [`handle`] reads top-down as the steps of docs/DESIGN.md:
//!
//! 1. classify: outside the reservation (or a `SIGBUS` outside the
//!    userfaultfd zone) → [`Outcome::NotOurs`];
//! 2. find the region in the map (no lock, no allocation);
//! 3. snapshot its sequence count and fields (odd or torn → `spf_vma_changed`);
//! 4. check the snapshot: address inside, region live, access allowed
//!    (`spf_vma_access`), speculation allowed (`spf_vma_notsup`);
//! 5. take an in-flight slot on this CPU and charge commit-ahead/populate
//!    against the cap (over it → `spf_cap`: shrink the plan, or go classic);
//! 6. lock the granules (`Committed` → someone else won, retry the access —
//!    or, for a missing page of a committed granule, which only a purge in
//!    the userfaultfd zone leaves, refill it; `Committing` → `spf_pte_lock`,
//!    wait for it to settle, retry), then re-check the sequence count (S3);
//! 7. commit the run with the backend (`mprotect`, `UFFDIO_COPY` or
//!    `MADV_GUARD_REMOVE`, see `backend`);
//! 8. publish `Committed` and account the bytes;
//! 9. release the slot (on drop); the access restarts.
//!
//! Step 8 differs from an earlier version of this design, which re-checked the
//! sequence count after the `mprotect` and undid the commit on a change.
//! That undo loses data: once the granule is accessible another thread can
//! write to it without faulting, and the undo (`MADV_DONTNEED`, or
//! `PROT_NONE` over a granule then marked `Uncommitted`) would discard or
//! hide that write. It is also unnecessary: after the S3 check the fault
//! owns the granule words, and every writer waits for them (`lock_settled`)
//! and then treats the granules as `Committed`, as the kernel's writers wait
//! on the PTE lock of a speculative fault that validated its VMA.
//!
//! Any step that gives up releases everything it holds and falls back to
//! the classic path, which repeats the work under the space lock and is the
//! only one that declares a fault fatal.
//!
//! # Async-signal-safety
//!
//! Everything reachable from [`handle`] is async-signal-safe:
//! - it reads only memory that is never unmapped (A1, G3, M-tables,
//!   type-stable descriptors D3) and validates what it read with sequence
//!   counts, so a stale read is detected, never acted on;
//! - it never allocates and never pins an epoch: no `Box`, no `Vec`, no
//!   formatting that allocates, no `crossbeam_epoch::pin()` (which may
//!   register a thread, allocate bags and run deferred functions, and is not
//!   reentrant). A debug-build guard (`handler_guard`) aborts if anything
//!   allocates while a handler runs;
//! - the only lock it takes is the space lock, on the classic path. The
//!   interrupted code cannot hold it, because nothing touches lazy memory
//!   while holding it (checked: a handler that finds its own thread holding
//!   the lock reports the bug instead of deadlocking);
//! - its thread-local state is `const`-initialised and has no destructor, so
//!   touching it never runs lazy initialisation;
//! - its system calls (`mprotect`, `madvise`, `ioctl(UFFDIO_COPY)`,
//!   `futex`, `sched_yield`, `sched_getcpu`, `write`) are
//!   async-signal-safe.

use crate::backend;
use crate::cap::InflightSlot;
use crate::commit::{CommitPlan, LockedRun};
use crate::descriptor::{RegionDesc, Snapshot};
use crate::granule::GranuleState;
use crate::handler_guard;
use crate::options::{self, CapPolicy, Mode};
use crate::primitive::thread_local;
use crate::space::Space;
use crate::stats::{self, Counter};
use crate::sys::{self, Errno};
use core::cell::Cell;
use likely_stable::{likely, unlikely};

/// What the faulting access was, where the architecture tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    Read,
    Write,
    Unknown,
}

/// What the kernel said is wrong with the page, by the signal it sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trap {
    /// `SIGSEGV`: the page is inaccessible (`PROT_NONE`, a guard marker) or
    /// does not allow this access.
    Protection,
    /// `SIGBUS` from userfaultfd: the page is missing.
    Missing,
}

/// The verdict on one fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not in our reservation: the previous handler's business.
    NotOurs,
    /// Committed (by us or by a racing fault): return and retry the access.
    Handled,
    /// A real fault in our space: report it and let the process die.
    Fatal(FatalFault),
}

/// Why a fault in our space cannot be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FatalFault {
    /// No live region holds the address (freed, or never handed out).
    NoRegion,
    /// No live region holds the address, and it lies just past the end of
    /// the live region `[start, end)`: most likely a buffer overflow.
    PastEnd { start: usize, end: usize },
    /// A write to a read-only region.
    WriteToReadOnly { start: usize, end: usize },
    /// The backend's commit failed even under the lock.
    CommitFailed {
        start: usize,
        end: usize,
        errno: Errno,
    },
    /// The faulting thread holds the space lock: a bug in spf.
    LockHeldBySelf,
    /// The same address keeps faulting although it is committed.
    Stuck { start: usize, end: usize },
    /// A signal handler that interrupted spf's fault handler touched a
    /// granule that the interrupted fault may be committing, or that
    /// another thread kept committing past a bound (a deadlock between
    /// two such nested faults).
    Nested,
}

/// Why the speculative path handed a fault to the classic one.
enum Fallback {
    /// The map had no region: the classic path confirms (and reports).
    NoRegion,
    Changed,
    NotSupported,
    Access,
    Cap,
    Frozen,
    CommitFailed,
}

thread_local! {
    /// The last faulting address on this thread and how often in a row it
    /// faulted: a fault that never stops is reported, not retried forever.
    static REPEAT: Cell<(usize, u32)> = const { Cell::new((0, 0)) };
}
const REPEAT_LIMIT: u32 = 10_000;

/// Serves one fault at `addr`. Async-signal-safe (see the module docs).
pub fn handle(space: &Space, addr: usize, access: AccessKind, trap: Trap) -> Outcome {
    // Step 1: classify. A `SIGBUS` is ours only where userfaultfd raises it.
    if !space.contains(addr) || (trap == Trap::Missing && !backend::missing_page_possible(addr)) {
        return Outcome::NotOurs;
    }
    let cpu = sys::current_cpu();
    stats::count_on(cpu, Counter::Faults);
    if likely(options::mode() == Mode::Speculative) {
        match speculative(space, addr, access, trap, cpu) {
            Ok(()) => {
                stats::count_on(cpu, Counter::Spf);
                return Outcome::Handled;
            }
            Err(reason) => stats::count_on(cpu, fallback_counter(reason)),
        }
    }
    let outcome = classic(space, addr, access, trap);
    let counter = match outcome {
        Outcome::Fatal(_) => Counter::Fatal,
        _ => Counter::Classic,
    };
    stats::count_on(cpu, counter);
    outcome
}

fn fallback_counter(reason: Fallback) -> Counter {
    match reason {
        Fallback::NoRegion | Fallback::Changed | Fallback::Frozen | Fallback::CommitFailed => {
            Counter::VmaChanged
        }
        Fallback::NotSupported => Counter::VmaNotsup,
        Fallback::Access => Counter::VmaAccess,
        Fallback::Cap => Counter::Cap,
    }
}

/// Steps 2–9, without the space lock.
fn speculative(
    space: &Space,
    addr: usize,
    access: AccessKind,
    trap: Trap,
    cpu: usize,
) -> Result<(), Fallback> {
    // Step 2: find.
    let idx = space.map.lookup(addr).ok_or(Fallback::NoRegion)?;
    let desc = space.descs.get(idx);
    // Step 3: snapshot.
    let snap = desc.snapshot().ok_or(Fallback::Changed)?;
    // Step 4: check.
    check(&snap, addr, access)?;
    // Step 5: slot and budget.
    let mut slot = InflightSlot::take(cpu).map_err(|_| Fallback::Frozen)?;
    let mut plan = CommitPlan::for_fault(&snap, &space.granules, addr);
    if unlikely(!slot.try_charge(plan.charge(), options::cap() as u64)) {
        match options::cap_policy() {
            CapPolicy::Shrink => {
                stats::count_on(cpu, Counter::Cap);
                plan.shrink();
            }
            CapPolicy::Classic => return Err(Fallback::Cap), // counted by `handle`
        }
    }
    // Step 6: lock the granules, then the S3 re-check.
    let _own = handler_guard::owning(plan.head, plan.head + plan.len());
    let run = match plan.lock(&space.granules) {
        Ok(run) => run,
        Err(GranuleState::Committed) if trap == Trap::Missing => {
            return refill(space, desc, snap.seq, &plan, cpu);
        }
        Err(state) => return settle(space, plan.head, state, cpu),
    };
    if unlikely(!desc.seq.unchanged_since(snap.seq)) {
        return Err(Fallback::Changed); // `run` unlocks on drop (K1)
    }
    // Step 7: commit.
    run.apply().map_err(|_| Fallback::CommitFailed)?;
    // Step 8: publish (see the module docs for why there is no undo).
    run.publish(desc);
    forget_repeats();
    // Step 9: `slot` is released here.
    drop(slot);
    Ok(())
}

/// Step 4.
fn check(snap: &Snapshot, addr: usize, access: AccessKind) -> Result<(), Fallback> {
    if unlikely(!snap.flags.live() || !snap.contains(addr)) {
        return Err(Fallback::Changed);
    }
    if unlikely(access == AccessKind::Write && snap.flags.read_only()) {
        return Err(Fallback::Access);
    }
    if unlikely(!snap.flags.speculative()) {
        return Err(Fallback::NotSupported);
    }
    Ok(())
}

/// Steps 6–8 for a missing page of a `Committed` granule (a purge dropped
/// it, userfaultfd zone): own the word, re-check, fill what is missing, and
/// hand the word back as `Committed`. Present pages are kept.
fn refill(
    space: &Space,
    desc: &RegionDesc,
    seq: u64,
    plan: &CommitPlan,
    cpu: usize,
) -> Result<(), Fallback> {
    if let Err(state) = space.granules.try_lock_committed(plan.head) {
        return settle(space, plan.head, state, cpu);
    }
    let filled = if desc.seq.unchanged_since(seq) {
        backend::refill(plan.head, plan.granule).map_err(|_| Fallback::CommitFailed)
    } else {
        Err(Fallback::Changed)
    };
    space.granules.unlock(plan.head, GranuleState::Committed);
    filled?;
    forget_repeats();
    Ok(())
}

/// Step 6 when the faulting granule was not `Uncommitted`.
fn settle(space: &Space, head: usize, state: GranuleState, cpu: usize) -> Result<(), Fallback> {
    if state == GranuleState::Committing {
        stats::count_on(cpu, Counter::PteLock);
        if unlikely(space.lock.held_by(sys::thread_id())) {
            // Our own thread may own that word: the classic path reports it.
            return Err(Fallback::Changed);
        }
        if unlikely(handler_guard::nested()) {
            // Another thread's fault finishes without us; the fault this
            // one interrupted cannot: the classic path judges.
            if handler_guard::interrupted_may_own(head) || !wait_settled_nested(space, head) {
                return Err(Fallback::Changed);
            }
        } else {
            space.granules.wait_settled(head);
        }
    }
    // Committed by someone else (or given back by its owner, and the retry
    // faults again).
    // A committed granule that keeps faulting is a write to a read-only
    // region on architectures that do not report the access: let the
    // classic path judge repeats.
    if repeats(head) {
        return Err(Fallback::Changed);
    }
    Ok(())
}

/// How long a nested fault waits for another thread's commit of a granule
/// before calling it a deadlock: that thread may itself be nested, waiting
/// for the granule the fault this one interrupted holds.
const NESTED_WAIT_NS: u64 = 5_000_000_000;

/// Waits, bounded, until the word of `head` is not `Committing`; false if
/// it still is after `NESTED_WAIT_NS`.
fn wait_settled_nested(space: &Space, head: usize) -> bool {
    let deadline = sys::monotonic_ns().saturating_add(NESTED_WAIT_NS);
    let mut spins = 0u32;
    while space.granules.state(head) == GranuleState::Committing {
        if sys::monotonic_ns() > deadline {
            return false;
        }
        crate::granule::backoff(&mut spins);
    }
    true
}

/// Counts consecutive faults by this thread that found the granule at
/// `head` already committed; returns the count.
fn count_repeat(head: usize) -> u32 {
    REPEAT.with(|r| {
        let (last, n) = r.get();
        let n = if last == head { n + 1 } else { 1 };
        r.set((head, n));
        n
    })
}

/// This thread committed something: its earlier faults were not stuck.
fn forget_repeats() {
    REPEAT.with(|r| r.set((0, 0)));
}

fn repeats(head: usize) -> bool {
    count_repeat(head) > 2
}

/// How far below an unmapped address the classic path looks for the
/// region it overran.
const OVERFLOW_REACH: usize = 1 << 20;

/// The classic path: the same steps under the space lock, where nothing can
/// change the region and the verdict is final.
fn classic(space: &Space, addr: usize, access: AccessKind, trap: Trap) -> Outcome {
    let tid = sys::thread_id();
    if unlikely(space.lock.held_by(tid)) {
        return Outcome::Fatal(FatalFault::LockHeldBySelf);
    }
    let _held = space.lock.lock(tid);
    let Some(idx) = space.map.lookup(addr) else {
        // Under the lock the map is settled: name the region the access
        // overran, if one ends shortly below it.
        return Outcome::Fatal(match space.region_ending_below(addr, OVERFLOW_REACH) {
            Some((start, end)) => FatalFault::PastEnd { start, end },
            None => FatalFault::NoRegion,
        });
    };
    let Some((mut plan, snap)) = space.plan_locked(idx, addr) else {
        return Outcome::Fatal(FatalFault::NoRegion);
    };
    if !snap.flags.live() {
        return Outcome::Fatal(FatalFault::NoRegion);
    }
    let (start, end) = (snap.start, snap.end);
    if access == AccessKind::Write && snap.flags.read_only() {
        return Outcome::Fatal(FatalFault::WriteToReadOnly { start, end });
    }
    let desc = space.descs.get(idx);
    let _own = handler_guard::owning(plan.head, plan.head + plan.len());
    // A speculative fault or refill owns the word; it needs no lock to
    // finish. If this fault is nested, the owner may be the fault its
    // signal interrupted, on this very thread, which cannot finish while
    // we wait; another thread's fault finishes (waited for, bounded).
    let wait_for_owner = |head| {
        if !handler_guard::nested() {
            space.granules.wait_settled(head);
            true
        } else {
            !handler_guard::interrupted_may_own(head) && wait_settled_nested(space, head)
        }
    };
    loop {
        let run: LockedRun<'_> = match plan.lock(&space.granules) {
            Ok(run) => run,
            Err(GranuleState::Committing) => {
                if !wait_for_owner(plan.head) {
                    return Outcome::Fatal(FatalFault::Nested);
                }
                continue;
            }
            Err(GranuleState::Committed) if trap == Trap::Missing => {
                if space.granules.try_lock_committed(plan.head).is_err() {
                    if !wait_for_owner(plan.head) {
                        return Outcome::Fatal(FatalFault::Nested);
                    }
                    continue;
                }
                let filled = backend::refill(plan.head, plan.granule);
                space.granules.unlock(plan.head, GranuleState::Committed);
                if let Err(errno) = filled {
                    return Outcome::Fatal(FatalFault::CommitFailed { start, end, errno });
                }
                forget_repeats();
                return Outcome::Handled;
            }
            Err(_) => {
                let n = count_repeat(plan.head);
                if access == AccessKind::Unknown && snap.flags.read_only() && n > 2 {
                    return Outcome::Fatal(FatalFault::WriteToReadOnly { start, end });
                }
                if n > REPEAT_LIMIT {
                    return Outcome::Fatal(FatalFault::Stuck { start, end });
                }
                return Outcome::Handled;
            }
        };
        if let Err(errno) = run.apply() {
            return Outcome::Fatal(FatalFault::CommitFailed { start, end, errno });
        }
        run.publish(desc);
        forget_repeats();
        return Outcome::Handled;
    }
}
