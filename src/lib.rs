#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub use spf_alloc::{
    purge, set_decay_ms, stats as alloc_stats, usable_size, AllocStats, Arena, ArenaError, SpfAlloc,
};
pub use spf_core::{
    backend, cap, cap_default, cap_policy, check_invariants, check_signal_mask, in_fault_handler,
    init, mode, monotonic_ns, purge_pages, region_at, reset_peaks, resident_bytes, set_backend,
    set_cap, set_cap_policy, set_mode, stats, Backend, BackendChoice, CapPolicy, Errno, Error,
    Granule, HandlerAllocGuard, Mode, Protection, Region, RegionInfo, RegionOptions, Stats,
    PAGE_SIZE,
};

// spf's own plumbing, shared by its crates, examples and tests; not an API.
#[doc(hidden)]
pub use spf_alloc::residency;
#[doc(hidden)]
pub use spf_core::{getenv, parse_size, report, testing};
