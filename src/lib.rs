#![doc = include_str!("../README.md")]

pub use spf_alloc::{
    purge, set_decay_ms, stats as alloc_stats, usable_size, AllocStats, Arena, ArenaError, SpfAlloc,
};
pub use spf_core::*;
