//! The allocator suite with `SpfAlloc` as the global allocator, in the
//! default modes (speculative faults, large blocks committed when allocated).
//! `alloc_modes.rs` runs the same workloads in the other modes.

mod common;

use common::alloc_suite::{collections, random_blocks, RANDOM_OPS};
use spf::SpfAlloc;

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

#[test]
fn std_collections_under_load() {
    collections(256, 200_000);
}

#[test]
fn random_sizes_and_alignments_on_eight_threads() {
    random_blocks(8, RANDOM_OPS, 64 << 20);
    let st = spf::alloc_stats();
    eprintln!("{st}");
}
