//! The fork handlers of the space (registered at start, before anyone
//! else's, so theirs nest outside ours).

use super::Space;
use crate::{backend, epoch};

/// `fork()` must not copy a half-done commit or a held lock into the child:
/// hold the space lock across the fork, then stop speculation and wait for
/// the faults in flight. Lock first: a second forking thread then waits for
/// the first fork to finish entirely before it freezes, so one fork's thaw
/// never releases speculation under another's (C2). Faults in flight can
/// always finish under the held lock: no writer or classic fault owns a
/// granule word while we hold it.
pub(crate) extern "C" fn prepare() {
    if let Some(space) = Space::ready() {
        core::mem::forget(space.lock());
    }
    crate::cap::freeze();
}

pub(crate) extern "C" fn parent() {
    crate::cap::thaw();
    if let Some(space) = Space::ready() {
        // SAFETY: fork_prepare took the lock and forgot the guard.
        unsafe { space.lock.force_unlock() };
    }
}

pub(crate) extern "C" fn child() {
    // Threads pinned in the parent's collector do not exist here and would
    // hold its epoch back forever: the child starts a collector of its own.
    epoch::renew_after_fork();
    // The child's lazy zone is no longer registered with userfaultfd: it
    // registers again before anything can fault (B1).
    backend::after_fork_in_child();
    crate::chain::after_fork_in_child();
    parent();
}
