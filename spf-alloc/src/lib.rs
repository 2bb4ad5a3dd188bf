//! spf-alloc: `SpfAlloc`, the global allocator of spf, and `Arena`, its
//! lazily committed bump arena.
//!
//! ```
//! #[global_allocator]
//! static GLOBAL: spf_alloc::SpfAlloc = spf_alloc::SpfAlloc::new();
//! # fn main() {}
//! ```
//!
//! Small (≤ 8 KiB) and medium (≤ 256 KiB) blocks come from thread heaps in
//! the style of mimalloc: size classes (`size_class`), small pages of
//! 64 KiB and medium pages of 256 KiB in 4 MiB segments that are spf-core
//! regions committed when made (`segment`, `PageKind`), a local free list
//! per page so the owning thread allocates and frees without atomics or
//! locks and a remote one (`thread_free`) that other threads push to with
//! one CAS (`heap/alloc.rs`, `heap/free.rs`), abandonment and adoption of
//! pages at thread exit (`heap/abandon.rs`, with the thread-exit key in
//! `thread`), and decay and the reclaim of idle heaps' pages
//! (`heap/reclaim.rs`). Large blocks are spf-core regions of their own, committed
//! when allocated — or on touch by the speculative fault path, if the
//! program opts in — and recycled through a cache with decay (`large`).
//!
//! See `docs/ARCHITECTURE.md` for the map of modules and invariants.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod arena;
mod decay;
mod global;
mod heap;
mod large;
mod lock;
mod lookup;
mod misuse;
mod options;
#[doc(hidden)]
pub mod residency;
mod segment;
mod size_class;
mod stats;
mod thread;

pub use arena::{Arena, ArenaError};
pub use global::{usable_size, SpfAlloc};
pub use lookup::block_layout;
pub use options::set_decay_ms;
pub use stats::{stats, AllocStats};

/// Gives freed memory back to the kernel now (what spf keeps of it stays
/// reserved and committed, and reads as zero; wholly free segments past
/// two of each kind go back to spf-core), instead of waiting for the decay
/// time:
/// every page in the page pool, every cached large block, the calling
/// thread's empty pages (the one each class keeps for reuse too), every
/// 4 KiB run of its partly used pages and of abandoned pages (pages of
/// exited threads still holding blocks) that only free blocks cover, and
/// every page of another thread's heap whose blocks were all freed by
/// other threads. Before that, the small blocks the calling thread freed
/// and holds — in its thread cache, to serve its own allocations (at most
/// 512 KiB), or waiting in its remote-free buffer (less than 64 KiB) — go
/// back to their pages.
///
/// What it does not reach: in another thread's heap, the first page of
/// each class queue (its owner allocates from it without a lock — the
/// empty page a class keeps for reuse is one); free memory inside other
/// threads' partly used pages; 4 KiB runs that a live block, or a block
/// freed by another thread and not yet collected by the page's owner,
/// overlaps; the small blocks that other threads freed and hold (each
/// thread caches at most 512 KiB of them for its own allocations and
/// buffers less than 64 KiB, which keeps their pages from being given
/// back; it gives them back on its decay ticks — the cached ones it did
/// not need since the last — on its own `purge()`, or at its exit).
/// Each thread gives those back itself, from its allocation slow path,
/// once a decay time has passed. Decay otherwise runs only when the
/// allocator is used, so an idle program can call this to shed freed
/// memory.
pub fn purge() {
    heap::release_own();
    heap::reclaim_all();
    segment::purge_all();
    large::purge_all();
}

/// Prints the allocator's figures to standard error at exit when
/// `SPF_STATS=1` (spf-core prints its fault counters beside them).
#[doc(hidden)]
pub fn register_stats_at_exit() {
    if matches!(
        spf_core::getenv(c"SPF_STATS"),
        Some(b"1" | b"yes" | b"true")
    ) {
        // SAFETY: a plain function with the signature atexit wants.
        unsafe { libc::atexit(stats::print_at_exit) };
    }
}
