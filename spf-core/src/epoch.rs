//! spf-core's own epoch collector (crossbeam-epoch), which decides when the
//! descriptor and the address range of a destroyed region may be reused.
//!
//! The fault handler never pins (docs/DESIGN.md: `pin()` can allocate and is not
//! reentrant); it is protected by type-stable descriptors and sequence
//! counts instead, and so is [`crate::region_at`], which allocators call
//! from `dealloc` (a pin there could free epoch garbage through that same
//! `dealloc`, recursively, at thread exit). The grace period is for code
//! that pins around its use of a region's range: while it is pinned, the
//! range is not handed to a new region.
//!
//! Invariant P1: spf-core never pins while holding the space lock, because
//! deferred functions (run by whichever thread pins next) take it. A
//! dedicated collector keeps other users of crossbeam-epoch from running
//! our deferred functions at a moment we do not control.

//!
//! After `fork()` the child gets a fresh collector ([`renew_after_fork`]):
//! threads that were pinned in the parent do not exist in the child and
//! would hold the old collector's epoch back forever. What the old one still
//! had to reclaim (regions destroyed just before the fork) stays out of use
//! in the child: a bounded leak of address space and descriptors.

use crossbeam_epoch::{Collector, Guard, LocalHandle};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

/// The current collector; replaced (and the old one leaked) after a fork.
static COLLECTOR: AtomicPtr<Collector> = AtomicPtr::new(core::ptr::null_mut());

/// Set in a fork child: the next pin starts a fresh collector.
static RENEW: AtomicBool = AtomicBool::new(false);

fn collector() -> &'static Collector {
    if RENEW.load(Ordering::Relaxed) && RENEW.swap(false, Ordering::Relaxed) {
        let fresh = Box::into_raw(Box::new(Collector::new()));
        COLLECTOR.store(fresh, Ordering::Release);
    }
    let p = COLLECTOR.load(Ordering::Acquire);
    // SAFETY: a non-null pointer comes from Box::into_raw and is never freed.
    if let Some(c) = unsafe { p.as_ref() } {
        return c;
    }
    let fresh = Box::into_raw(Box::new(Collector::new()));
    match COLLECTOR.compare_exchange(
        core::ptr::null_mut(),
        fresh,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        // SAFETY: just published; never freed.
        Ok(_) => unsafe { &*fresh },
        Err(won) => {
            // SAFETY: `fresh` was never shared, so we may free it; `won` is
            // never freed.
            unsafe {
                drop(Box::from_raw(fresh));
                &*won
            }
        }
    }
}

thread_local! {
    /// This thread's handle, and the collector it belongs to.
    static HANDLE: RefCell<Option<(*const Collector, LocalHandle)>> = const { RefCell::new(None) };
}

/// Pins the current thread in spf-core's collector (P1: never under the
/// space lock).
///
/// The thread-local is never borrowed across a call that may allocate
/// (`register`), so an allocator built on spf-core may pin again from
/// inside that allocation; a pin that finds the slot busy uses a temporary
/// handle.
pub fn pin() -> Guard {
    let c = collector();
    let pinned = HANDLE.try_with(|h| {
        let current =
            matches!(h.try_borrow().as_deref(), Ok(Some((owner, _))) if core::ptr::eq(*owner, c));
        if !current {
            let fresh = c.register();
            if let Ok(mut slot) = h.try_borrow_mut() {
                *slot = Some((c, fresh));
            }
        }
        h.try_borrow().ok().and_then(|slot| match &*slot {
            Some((owner, handle)) if core::ptr::eq(*owner, c) => Some(handle.pin()),
            _ => None,
        })
    });
    // During thread teardown the thread-local may be gone: register a
    // temporary handle, as crossbeam's own default collector does.
    pinned.ok().flatten().unwrap_or_else(|| c.register().pin())
}

/// Pins and flushes `rounds` times: each flush moves this thread's deferred
/// functions to the global queue and tries to advance the epoch and run
/// what is due, so a few rounds end the grace period of what was destroyed
/// before, unless another thread stays pinned. For tests that need a
/// destroyed region's range back now (P1: not under the space lock).
pub fn flush(rounds: usize) {
    for _ in 0..rounds {
        pin().flush();
    }
}

/// Asks for a fresh collector in a fork child (see the module docs). Called
/// from the `pthread_atfork` child handler, which must not allocate: the
/// child's allocator may still be locked until its own handler runs. The
/// collector is made at the child's first pin instead.
pub fn renew_after_fork() {
    RENEW.store(true, Ordering::Relaxed);
}
