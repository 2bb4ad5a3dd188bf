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

#[test]
fn impossible_requests_return_null_not_a_crash() {
    use std::alloc::{alloc, Layout};
    // Larger than the whole reservation (256 GiB by default).
    let layout = Layout::from_size_align(1 << 40, 8).unwrap();
    // SAFETY: a valid layout; a null return is the expected answer. The
    // black boxes stop the optimiser from eliding the allocation (and
    // assuming it succeeded).
    let p = unsafe { alloc(std::hint::black_box(layout)) };
    assert!(std::hint::black_box(p).is_null());
    let mut v: Vec<u8> = Vec::new();
    assert!(v.try_reserve(1 << 40).is_err());
    // The allocator goes on working afterwards.
    v.extend_from_slice(&[1, 2, 3]);
    assert_eq!(v, [1, 2, 3]);
}
