//! `SeqCount`: the per-region sequence count (the kernel's `vm_sequence`).
//!
//! Protocol, stated once here and cited elsewhere:
//! - S1: the count is even while nobody changes the region and odd while a
//!   writer (holding the space lock) does. Only writers change it, so it only
//!   grows: a descriptor's count never repeats, even across reuse.
//! - S2: a reader takes a snapshot with [`SeqCount::read_begin`], reads the
//!   region's fields, and accepts them only if [`SeqCount::read_validate`]
//!   sees the same even count: then no writer ran in between, and the fields
//!   are one consistent version.
//! - S3 (the Dekker pair with the granule table): a writer makes the count odd
//!   with a `SeqCst` RMW *before* it looks at granule states; a fault locks a
//!   granule with a `SeqCst` CAS *before* it re-reads the count with
//!   [`SeqCount::unchanged_since`] (`SeqCst`). In the single total order of
//!   `SeqCst` operations one comes first, so either the fault sees the odd
//!   count and backs off, or the writer sees the locked granule and waits.
//!   A fault that passed this check may commit: the writer cannot touch that
//!   granule until the fault releases it.

use crate::primitive::sync::atomic::{fence, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct SeqCount(AtomicU64);

impl SeqCount {
    /// A snapshot to validate later, or `None` if a writer is inside (S1).
    #[inline]
    pub fn read_begin(&self) -> Option<u64> {
        // Acquire pairs with the Release of `write_end`: fields written
        // before the count became even are visible to reads after this.
        let s = self.0.load(Ordering::Acquire);
        if s & 1 == 0 {
            Some(s)
        } else {
            None
        }
    }

    /// Whether the fields read since `read_begin` returned `snapshot` form a
    /// consistent version (S2).
    #[inline]
    pub fn read_validate(&self, snapshot: u64) -> bool {
        // The fence keeps the field loads above from moving below the
        // re-read of the count (the classic seqlock reader).
        fence(Ordering::Acquire);
        self.0.load(Ordering::Relaxed) == snapshot
    }

    /// The `SeqCst` re-read of S3, made after locking a granule.
    #[inline]
    pub fn unchanged_since(&self, snapshot: u64) -> bool {
        self.0.load(Ordering::SeqCst) == snapshot
    }

    /// Makes the count odd. Caller holds the space lock.
    #[inline]
    pub fn write_begin(&self) {
        // SeqCst: the first half of S3.
        let before = self.0.fetch_add(1, Ordering::SeqCst);
        debug_assert!(before & 1 == 0, "nested region writers");
        // The writer's field stores that follow must not become visible
        // before the odd count: this fence pairs with the Acquire fence in
        // `read_validate` (a reader that saw a new field value then sees
        // the count changed). The kernel's write_seqcount_begin has the
        // same smp_wmb().
        fence(Ordering::Release);
    }

    /// Makes the count even again, publishing the writer's changes.
    #[inline]
    pub fn write_end(&self) {
        // Release pairs with the Acquire of `read_begin`.
        let before = self.0.fetch_add(1, Ordering::Release);
        debug_assert!(before & 1 == 1, "write_end without write_begin");
    }
}

// Not under loom: loom's atomics work only inside a model.
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn snapshot_fails_across_a_write() {
        let s = SeqCount::default();
        let snap = s.read_begin().unwrap();
        assert!(s.read_validate(snap));
        s.write_begin();
        assert!(s.read_begin().is_none());
        assert!(!s.unchanged_since(snap));
        s.write_end();
        let again = s.read_begin().unwrap();
        assert_ne!(again, snap);
        assert!(!s.read_validate(snap));
    }
}
