//! `check_invariants` reports a broken invariant without allocating under
//! the space lock: with `SpfAlloc` as the global allocator, an allocation
//! there may need the space lock itself (a new segment or large block),
//! and the checker would deadlock exactly when it has something to say.
//!
//! The global allocator here is `SpfAlloc` behind a wrapper that counts the
//! allocations made while the calling thread holds the space lock.

use spf::SpfAlloc;
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

struct Watch(SpfAlloc);

static UNDER_LOCK: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to SpfAlloc.
unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if spf::testing::space_lock_held_by_me() {
            UNDER_LOCK.fetch_add(1, Relaxed);
        }
        // SAFETY: forwarded with the caller's contract.
        unsafe { self.0.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { self.0.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if spf::testing::space_lock_held_by_me() {
            UNDER_LOCK.fetch_add(1, Relaxed);
        }
        // SAFETY: as above.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Watch = Watch(SpfAlloc::new());

#[test]
fn a_broken_invariant_is_reported_without_allocating_under_the_lock() {
    // Some regions, so the checker walks real state first.
    let blocks: Vec<Vec<u8>> = (0..8).map(|i| vec![i as u8; 300 << 10]).collect();
    spf::check_invariants().unwrap();
    assert_eq!(UNDER_LOCK.load(Relaxed), 0);
    spf::testing::skew_committed_gauge(4096);
    let report = spf::check_invariants();
    spf::testing::skew_committed_gauge(-4096);
    let message = report.expect_err("a skewed gauge is a broken invariant");
    assert!(message.contains("committed gauge"), "{message}");
    assert_eq!(
        UNDER_LOCK.load(Relaxed),
        0,
        "check_invariants allocated while holding the space lock"
    );
    spf::check_invariants().unwrap();
    drop(blocks);
}
