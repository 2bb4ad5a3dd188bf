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

#[test]
fn a_threads_own_frees_are_reused_before_new_memory() {
    use std::alloc::{alloc, dealloc, Layout};
    use std::collections::{BTreeMap, BTreeSet};
    // A fresh thread (a heap of its own) and a class nothing else here
    // uses much: blocks spread over four 64 KiB pages (fewer than the
    // slow path looks through before it takes a new page).
    std::thread::spawn(|| {
        let layout = Layout::from_size_align(2_500, 8).unwrap();
        // SAFETY: valid layouts; every block is freed once, with its layout.
        let blocks: Vec<*mut u8> = (0..100)
            .map(|_| unsafe { alloc(std::hint::black_box(layout)) })
            .collect();
        assert!(blocks.iter().all(|p| !p.is_null()));
        let first: BTreeSet<usize> = blocks.iter().map(|&p| p as usize).collect();
        let mut by_page: BTreeMap<usize, Vec<*mut u8>> = BTreeMap::new();
        for &p in &blocks {
            by_page.entry(p as usize & !0xffff).or_default().push(p);
        }
        assert!(by_page.len() >= 3, "the blocks should span several pages");
        // Free all but one block of each page, on this thread: every page
        // keeps a live block (so none goes back to the pool) and holds
        // the rest as its own frees.
        let mut kept = Vec::new();
        let mut freed = 0;
        for page in by_page.values() {
            kept.push(page[0]);
            for &p in &page[1..] {
                // SAFETY: allocated above with `layout`, freed once.
                unsafe { dealloc(p, layout) };
                freed += 1;
            }
        }
        // As many allocations again take those blocks back, from every
        // page (not only the page allocated from first): no block of
        // memory not handed out before.
        // SAFETY: as above.
        let again: Vec<*mut u8> = (0..freed)
            .map(|_| unsafe { alloc(std::hint::black_box(layout)) })
            .collect();
        let fresh = again
            .iter()
            .filter(|&&p| !first.contains(&(p as usize)))
            .count();
        assert_eq!(fresh, 0, "{fresh} of {freed} blocks came from new memory");
        for p in again.into_iter().chain(kept) {
            // SAFETY: live blocks of `layout`, freed once.
            unsafe { dealloc(p, layout) };
        }
    })
    .join()
    .unwrap();
}
