//! The synchronization primitives of the fault protocol, switchable to
//! [loom](https://docs.rs/loom)'s for model checking (crossbeam's
//! `primitive` module, the same trick).
//!
//! Normal builds re-export `core`'s atomics and `std`'s `thread_local!`:
//! the names are the same items, so the generated code is unchanged. Under
//! `RUSTFLAGS="--cfg loom"` they become loom's mocks, which record every
//! access and let `tests/loom_protocol.rs` explore the interleavings (and
//! the weak-memory outcomes) of the real `seq`, `granule`, `cap`, `commit`
//! and `fault` code. See `docs/reliability.md`.
//!
//! Only the modules that the model runs use this shim; everything else
//! keeps `core::sync::atomic` (its atomics need `const` constructors or
//! live in zeroed mappings, which loom's atomics cannot).
//!
//! Under loom:
//! - atomics cannot live in a `static` (they belong to one execution): the
//!   statics of `cap` become `loom::lazy_static!`s, and the granule table
//!   owns a boxed slice instead of a zeroed mapping;
//! - every spin loop must yield to loom's scheduler, hence `hint::spin_loop`;
//! - loom's threads are coroutines on one OS thread, so the fault path's
//!   `thread_local!` must be loom's too.

#[cfg(not(loom))]
pub(crate) mod sync {
    pub(crate) mod atomic {
        pub(crate) use core::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicU8, Ordering};
    }
}

#[cfg(loom)]
pub(crate) mod sync {
    pub(crate) mod atomic {
        pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicU8, Ordering};
    }
}

#[cfg(not(loom))]
pub(crate) mod hint {
    pub(crate) use core::hint::spin_loop;
}

#[cfg(loom)]
pub(crate) mod hint {
    pub(crate) use loom::hint::spin_loop;
}

#[cfg(not(loom))]
pub(crate) use std::thread_local;

/// loom's `thread_local!`, accepting std's `const { … }` initialiser (a
/// loom key is always initialised lazily, per model thread).
#[cfg(loom)]
macro_rules! loom_thread_local {
    ($(#[$attr:meta])* $vis:vis static $name:ident: $t:ty = const { $init:expr };) => {
        loom::thread_local! { $(#[$attr])* $vis static $name: $t = $init; }
    };
}
#[cfg(loom)]
pub(crate) use loom_thread_local as thread_local;
