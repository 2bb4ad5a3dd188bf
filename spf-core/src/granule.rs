//! `GranuleTable`: the commit state of every page of the reservation (the
//! kernel's PTE and PTE lock, in one byte).
//!
//! State belongs to the *address*, not to a region descriptor: a fault that
//! read a stale descriptor can only lock the words of the addresses it is
//! about to `mprotect`, and a writer reusing that range waits on those same
//! words. A region uses the word of the first page of each of its granules
//! (its *head*); the other words stay `Uncommitted`.
//!
//! Invariants:
//! - G1: a word is `Committing` only while one thread owns it: a fault that
//!   won the CAS from `Uncommitted` (a commit) or from `Committed` (a refill
//!   of pages a purge dropped, userfaultfd zone only), or a writer that won
//!   it from any settled state. Only the owner writes the word next.
//! - G2: a head word is `Committed` iff its granule is accessible in a live
//!   region (in the userfaultfd zone: present, or missing after a purge and
//!   refilled by the fault that touches it); every other word is
//!   `Uncommitted` (or briefly owned, G1).
//! - G3: the table is mapped for the life of the process, so reading it is
//!   always safe, from any thread or handler.

use crate::primitive::hint;
use crate::primitive::sync::atomic::{AtomicU8, Ordering};
use crate::sys;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum GranuleState {
    Uncommitted = 0,
    Committing = 1,
    Committed = 2,
}

impl GranuleState {
    fn from_raw(v: u8) -> GranuleState {
        match v {
            0 => GranuleState::Uncommitted,
            1 => GranuleState::Committing,
            _ => GranuleState::Committed,
        }
    }
}

pub struct GranuleTable {
    base: usize,
    #[cfg(not(loom))]
    words: &'static [AtomicU8],
    /// Under loom, atomics cannot be conjured from zeroed memory: the model's
    /// table owns ordinary loom atomics (see `primitive`).
    #[cfg(loom)]
    words: Box<[AtomicU8]>,
}

impl GranuleTable {
    /// A table for `pages` pages of the reservation starting at `base`.
    #[cfg(not(loom))]
    pub fn new(base: usize, pages: usize) -> Result<GranuleTable, sys::Errno> {
        let table = sys::map_table(pages)?;
        // SAFETY: `map_table` returned `pages` zeroed, writable bytes that are
        // never unmapped (G3); AtomicU8 has the layout of u8, and zero is
        // `Uncommitted`.
        let words = unsafe { core::slice::from_raw_parts(table as *const AtomicU8, pages) };
        Ok(GranuleTable { base, words })
    }

    /// The model's table (loom builds only): `pages` fresh `Uncommitted`
    /// words, owned rather than mapped.
    #[cfg(loom)]
    pub fn new(base: usize, pages: usize) -> Result<GranuleTable, sys::Errno> {
        let words = (0..pages)
            .map(|_| AtomicU8::new(GranuleState::Uncommitted as u8))
            .collect();
        Ok(GranuleTable { base, words })
    }

    #[inline]
    fn word(&self, addr: usize) -> &AtomicU8 {
        &self.words[(addr - self.base) / sys::PAGE_SIZE]
    }

    #[inline]
    pub fn state(&self, head: usize) -> GranuleState {
        GranuleState::from_raw(self.word(head).load(Ordering::Acquire))
    }

    /// A fault's lock: `Uncommitted` → `Committing`. Returns the state found
    /// when the lock is not taken.
    #[inline]
    pub fn try_lock_uncommitted(&self, head: usize) -> Result<(), GranuleState> {
        self.try_lock_from(head, GranuleState::Uncommitted)
    }

    /// A refilling fault's lock: `Committed` → `Committing` (G1). Returns the
    /// state found when the lock is not taken.
    #[inline]
    pub fn try_lock_committed(&self, head: usize) -> Result<(), GranuleState> {
        self.try_lock_from(head, GranuleState::Committed)
    }

    #[inline]
    fn try_lock_from(&self, head: usize, from: GranuleState) -> Result<(), GranuleState> {
        // SeqCst: the second half of S3 (see `seq`); it must come before the
        // fault's `unchanged_since` in the total order.
        self.word(head)
            .compare_exchange(
                from as u8,
                GranuleState::Committing as u8,
                Ordering::SeqCst,
                Ordering::Acquire,
            )
            .map(|_| ())
            .map_err(GranuleState::from_raw)
    }

    /// A writer's lock: waits until the word is settled, then owns it.
    /// Returns the settled state it replaced.
    pub fn lock_settled(&self, head: usize) -> GranuleState {
        let word = self.word(head);
        let mut spins = 0u32;
        loop {
            let cur = word.load(Ordering::SeqCst);
            if cur != GranuleState::Committing as u8
                && word
                    .compare_exchange(
                        cur,
                        GranuleState::Committing as u8,
                        Ordering::SeqCst,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                return GranuleState::from_raw(cur);
            }
            backoff(&mut spins);
        }
    }

    /// Waits until the word is not `Committing` (used under the space lock
    /// by the classic path, which must not take the word from its owner).
    pub fn wait_settled(&self, head: usize) -> GranuleState {
        let mut spins = 0u32;
        loop {
            let s = self.state(head);
            if s != GranuleState::Committing {
                return s;
            }
            backoff(&mut spins);
        }
    }

    /// The owner's release (G1): publishes the final state.
    #[inline]
    pub fn unlock(&self, head: usize, state: GranuleState) {
        debug_assert_ne!(state, GranuleState::Committing);
        debug_assert_eq!(self.state(head), GranuleState::Committing, "G1");
        // Release pairs with the Acquire loads of `state`/`wait_settled`:
        // whoever sees `Committed` also sees the page accessible.
        self.word(head).store(state as u8, Ordering::Release);
    }
}

/// Spin briefly, then yield: on an oversubscribed machine the owner of a
/// word may be descheduled, and spinning would only delay it.
#[inline]
pub fn backoff(spins: &mut u32) {
    if *spins < 16 {
        hint::spin_loop();
    } else {
        sys::yield_now();
    }
    *spins = spins.saturating_add(1);
}
