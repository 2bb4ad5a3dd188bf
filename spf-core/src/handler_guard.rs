//! Knowing whether this thread is inside the fault handler, and a
//! debug-build allocator wrapper that aborts if anything allocates there.
//!
//! docs/DESIGN.md requires the handler to allocate nothing. An allocator cannot see
//! who calls it, so the handler marks its thread with a `const`-initialised
//! thread-local depth (safe to touch from a signal handler: no lazy
//! initialisation, no destructor), and [`HandlerAllocGuard`] — the global
//! allocator of spf's own tests, and a model for spf-alloc — checks the
//! mark on every call in debug builds.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// Per handler depth (1, 2, …), the granule words `[start, end)` that
    /// fault is locking or owns (G1 in `granule`); `(0, 0)` when none.
    static OWNED: [Cell<(usize, usize)>; OWNED_DEPTHS] =
        const { [const { Cell::new((0, 0)) }; OWNED_DEPTHS] };
}

const OWNED_DEPTHS: usize = 4;

/// Marks this thread as inside the handler while alive.
pub(crate) struct HandlerScope(());

impl HandlerScope {
    pub(crate) fn enter() -> HandlerScope {
        DEPTH.with(|d| d.set(d.get() + 1));
        #[cfg(debug_assertions)]
        if ALLOCATE_IN_HANDLER.load(core::sync::atomic::Ordering::Relaxed) {
            // The violation the guard must catch (see `testing`).
            let b = std::hint::black_box(Box::new(0u64));
            drop(b);
        }
        HandlerScope(())
    }
}

impl Drop for HandlerScope {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get() - 1));
    }
}

/// Whether this handler runs on top of another run of it on the same
/// thread (a signal handler that interrupted a fault touched lazy memory).
#[inline]
pub(crate) fn nested() -> bool {
    DEPTH.with(|d| d.get() > 1)
}

/// Whether this thread is inside spf's fault handler now.
#[inline]
pub fn in_fault_handler() -> bool {
    DEPTH.with(|d| d.get() != 0)
}

/// Marks the granule words of `[start, end)` as this fault's while alive:
/// set before the fault tries to lock them, so that a fault nested in it
/// (a signal handler that interrupted it touched lazy memory) can tell a
/// word this thread may hold — waiting for it would never end — from one
/// another thread holds and will release.
pub(crate) struct Owning {
    level: usize,
    outer: (usize, usize),
}

pub(crate) fn owning(start: usize, end: usize) -> Owning {
    let level = (DEPTH.with(Cell::get).max(1) as usize - 1).min(OWNED_DEPTHS - 1);
    Owning {
        level,
        outer: OWNED.with(|o| o[level].replace((start, end))),
    }
}

impl Drop for Owning {
    fn drop(&mut self) {
        OWNED.with(|o| o[self.level].set(self.outer));
    }
}

/// Whether a fault that this one interrupted on this thread may own the
/// granule word of `head`.
pub(crate) fn interrupted_may_own(head: usize) -> bool {
    let depth = DEPTH.with(Cell::get) as usize;
    if depth > OWNED_DEPTHS {
        return true; // not recorded that deep: assume the worst
    }
    OWNED.with(|o| {
        o[..depth.saturating_sub(1)].iter().any(|r| {
            let (start, end) = r.get();
            start <= head && head < end
        })
    })
}

#[cfg(debug_assertions)]
static ALLOCATE_IN_HANDLER: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

/// Test hook (debug builds only): make the handler allocate on entry, to
/// prove that [`HandlerAllocGuard`] catches it. Never enable it otherwise.
#[cfg(debug_assertions)]
pub fn set_allocate_in_handler(on: bool) {
    ALLOCATE_IN_HANDLER.store(on, core::sync::atomic::Ordering::Relaxed);
}

/// A `GlobalAlloc` wrapper that, in debug builds, aborts the process with a
/// message if it is called inside the fault handler. Release builds pass
/// straight through.
pub struct HandlerAllocGuard<A>(pub A);

impl<A> HandlerAllocGuard<A> {
    #[inline]
    fn check(&self) {
        #[cfg(debug_assertions)]
        if in_fault_handler() {
            crate::sys::write_stderr(b"spf: allocation inside the fault handler\n");
            // SAFETY: abort has no preconditions.
            unsafe { libc::abort() };
        }
    }
}

// SAFETY: every method checks the handler mark and delegates to `A`, which
// upholds the GlobalAlloc contract.
unsafe impl<A: GlobalAlloc> GlobalAlloc for HandlerAllocGuard<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.check();
        // SAFETY: forwarded unchanged from our caller.
        unsafe { self.0.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.check();
        // SAFETY: forwarded unchanged from our caller.
        unsafe { self.0.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.check();
        // SAFETY: forwarded unchanged from our caller.
        unsafe { self.0.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.check();
        // SAFETY: forwarded unchanged from our caller.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}
