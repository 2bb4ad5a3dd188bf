//! spf-core's own epoch collector (crossbeam-epoch), which decides when the
//! descriptor and the address range of a destroyed region may be reused.
//!
//! The fault handler never pins (DESIGN: `pin()` can allocate and is not
//! reentrant); it is protected by type-stable descriptors and sequence
//! counts instead. Epochs protect the *normal* paths that read a descriptor
//! without the space lock ([`crate::region_at`]): while such a reader is
//! pinned, the region it found is not recycled under it.
//!
//! Invariant P1: spf-core never pins while holding the space lock, because
//! deferred functions (run by whichever thread pins next) take it. A
//! dedicated collector keeps other users of crossbeam-epoch from running
//! our deferred functions at a moment we do not control.

use crossbeam_epoch::{Collector, Guard, LocalHandle};
use std::sync::OnceLock;

fn collector() -> &'static Collector {
    static COLLECTOR: OnceLock<Collector> = OnceLock::new();
    COLLECTOR.get_or_init(Collector::new)
}

thread_local! {
    static HANDLE: LocalHandle = collector().register();
}

/// Pins the current thread in spf-core's collector (P1: never under the
/// space lock).
pub fn pin() -> Guard {
    // During thread teardown the thread-local handle may be gone: register
    // a temporary one, as crossbeam's own default collector does.
    HANDLE
        .try_with(LocalHandle::pin)
        .unwrap_or_else(|_| collector().register().pin())
}
