//! `SpinLock`: the lock of the allocator's slow paths (the page pool, the
//! abandoned pages, the large-block cache, the heap pool).
//!
//! Not `std::sync::Mutex`, whose lazy parts could allocate and whose
//! poisoning is meaningless here: a word and a spin-then-yield loop. Held
//! only for a few list operations; never across a call into spf-core that
//! could pin an epoch or take the space lock (rule R1 of `heap`), and never
//! on the allocation fast path.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

pub struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only reached through a guard, and one guard exists
// at a time (the `locked` flag).
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: moving the lock moves the value.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub const fn new(value: T) -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    pub fn lock(&self) -> SpinGuard<'_, T> {
        let mut spins = 0u32;
        // Acquire pairs with the Release in `unlock`.
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            if spins < 32 {
                core::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
        SpinGuard { lock: self }
    }

    /// The lock if it is free now, else `None` (for work that may be
    /// skipped, such as reclaiming another heap's pages).
    pub fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        // Acquire pairs with the Release in `unlock`. A plain load first:
        // a busy lock is then left shared rather than taken exclusive.
        if self.locked.load(Ordering::Relaxed) {
            return None;
        }
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| SpinGuard { lock: self })
    }

    /// Takes the lock and forgets the guard (fork prepare).
    pub fn lock_forever(&self) {
        core::mem::forget(self.lock());
    }

    /// The value under a lock taken with `lock_forever` (fork handlers).
    ///
    /// # Safety
    /// The lock must be held through `lock_forever` by this thread (or, in
    /// a fork child, by the thread that forked), and no other reference to
    /// the value may be live.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn forgotten(&self) -> &mut T {
        debug_assert!(self.locked.load(Ordering::Relaxed));
        // SAFETY: the caller's contract: the lock is held, so this is the
        // only access.
        unsafe { &mut *self.value.get() }
    }

    /// Releases a lock taken with `lock_forever`.
    ///
    /// # Safety
    /// The lock must be held through `lock_forever`.
    pub unsafe fn unlock_forgotten(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

pub struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves exclusive access.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves exclusive access.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}
