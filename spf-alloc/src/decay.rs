//! The decay clock: the time that counts toward the decay of freed memory
//! (`SPF_DECAY_MS`). It runs with the monotonic clock while the allocator
//! is in use, and skips idle stretches: a gap of more than `IDLE_GAP`
//! between two readings counts as `IDLE_GAP`.
//!
//! Why: decay runs only when the allocator is called (there is no
//! background thread). Memory freed before an idle stretch therefore stays
//! resident through it whatever the clock says, and with the wall clock
//! the first call after it found everything past its decay time and
//! purged it, just as the program came back to reuse it: each purged page
//! then faulted in again, and a 2 MiB huge page was zeroed again. On the
//! mixed torture, whose repetitions alternate with other allocators' runs
//! for about 1.5 s, the clock took the faults per repetition from about
//! 160k to 140k, and the huge-page faults among them from about 145 to 70
//! (medians of 15 and 6 repetitions on a loaded 2-vCPU VM). With the decay clock the memory freed before the stretch
//! is purged after the decay time of activity, if the program has not
//! reused it by then: the resident memory over the idle stretch is
//! unchanged, and the peak too.
//!
//! Invariants:
//! - D1: `now()` never goes back by more than the skew added by a racing
//!   reader (callers compare with `saturating_sub`).
//! - D2: a stretch counts in full up to `IDLE_GAP`, so a program active at
//!   least every `IDLE_GAP` decays on the wall clock.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The longest stretch between two readings that counts in full. A
/// program calling the allocator's slow paths less often than this decays
/// more slowly than its decay time, by at most the ratio of its gaps to
/// this one.
pub const IDLE_GAP: u64 = 100_000_000; // 100 ms

/// The latest monotonic reading seen.
static LAST: AtomicU64 = AtomicU64::new(0);
/// Nanoseconds of idle stretches not counted (the wall clock minus the
/// decay clock).
static SKIPPED: AtomicU64 = AtomicU64::new(0);
/// Idle stretches skipped, for statistics.
pub static IDLE_STRETCHES: AtomicU64 = AtomicU64::new(0);

/// The decay clock now, in nanoseconds (comparable only with itself).
pub fn now() -> u64 {
    let wall = spf_core::monotonic_ns();
    // fetch_max: exactly one reader sees each jump past `IDLE_GAP`, so a
    // stretch is skipped once. Relaxed: the clock orders nothing; a racing
    // reader may read `SKIPPED` before the jump's addition lands (D1).
    let last = LAST.fetch_max(wall, Relaxed);
    if last != 0 && wall > last + IDLE_GAP {
        SKIPPED.fetch_add(wall - last - IDLE_GAP, Relaxed);
        IDLE_STRETCHES.fetch_add(1, Relaxed);
    }
    wall - SKIPPED.load(Relaxed)
}
