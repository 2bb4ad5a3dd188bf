//! `SpaceLock`: the process-wide lock of region writers and the classic
//! fault path (the kernel's `mmap_sem`).
//!
//! A futex word rather than `std::sync::Mutex` because the classic path takes
//! it inside the `SIGSEGV` handler: it is built only from atomics and the
//! `futex` system call, both async-signal-safe, and it records its owner so
//! that a handler finding its own thread inside can report the bug instead
//! of deadlocking (docs/DESIGN.md: nothing touches lazy memory under the lock).
//!
//! Invariants:
//! - L1: `state` is 0 (free), 1 (held) or 2 (held, maybe waiters).
//! - L2: `owner` names the holder (`sys::thread_id`) while held, 0
//!   otherwise (best effort: only read for the self-deadlock report).

use crate::sys;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

pub struct SpaceLock {
    state: AtomicU32,
    owner: AtomicUsize,
}

impl SpaceLock {
    pub const fn new() -> Self {
        SpaceLock {
            state: AtomicU32::new(0),
            owner: AtomicUsize::new(0),
        }
    }

    /// Takes the lock. `tid` names the caller (`sys::thread_id`).
    pub fn lock(&self, tid: usize) -> SpaceGuard<'_> {
        // Acquire pairs with the Release in `unlock`: the previous holder's
        // writes are visible to us.
        if self
            .state
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
        self.owner.store(tid, Ordering::Relaxed);
        SpaceGuard { lock: self }
    }

    #[cold]
    #[inline(never)]
    fn lock_contended(&self) {
        let mut spins = 0;
        while spins < 64 {
            if self.state.load(Ordering::Relaxed) == 0
                && self
                    .state
                    .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
            core::hint::spin_loop();
            spins += 1;
        }
        // Mark "maybe waiters" and sleep until it is free.
        while self.state.swap(2, Ordering::Acquire) != 0 {
            sys::futex_wait(&self.state, 2);
        }
    }

    /// Whether anyone holds the lock now (a snapshot). Async-signal-safe.
    #[cfg(feature = "fault-injection")]
    pub fn is_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) != 0
    }

    /// Whether `tid` holds the lock now.
    pub fn held_by(&self, tid: usize) -> bool {
        self.state.load(Ordering::Relaxed) != 0 && self.owner.load(Ordering::Relaxed) == tid
    }

    fn unlock(&self) {
        self.owner.store(0, Ordering::Relaxed);
        if self.state.swap(0, Ordering::Release) == 2 {
            sys::futex_wake_one(&self.state);
        }
    }

    /// Releases a lock taken without a guard: the fork handlers take it in
    /// `prepare` and release it in the parent and in the child, which have
    /// no guard to drop.
    ///
    /// # Safety
    /// The lock must be held by a `SpaceGuard` that was forgotten.
    pub unsafe fn force_unlock(&self) {
        self.unlock();
    }
}

/// Holding the space lock.
pub struct SpaceGuard<'a> {
    lock: &'a SpaceLock,
}

impl Drop for SpaceGuard<'_> {
    fn drop(&mut self) {
        self.lock.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn excludes_under_contention() {
        struct Shared(SpaceLock, core::cell::UnsafeCell<u64>);
        // SAFETY: the u64 is only touched while holding the lock.
        unsafe impl Sync for Shared {}
        let shared = Arc::new(Shared(SpaceLock::new(), core::cell::UnsafeCell::new(0)));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let s = shared.clone();
                std::thread::spawn(move || {
                    let tid = sys::thread_id();
                    for _ in 0..20_000 {
                        let _g = s.0.lock(tid);
                        assert!(s.0.held_by(tid));
                        // SAFETY: we hold the lock.
                        unsafe { *s.1.get() += 1 };
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // SAFETY: all threads have finished.
        assert_eq!(unsafe { *shared.1.get() }, 8 * 20_000);
    }
}
