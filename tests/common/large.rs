//! Helpers of the large-block tests: layouts and the region behind a block.
#![allow(dead_code)] // each test binary uses its own subset

use std::alloc::Layout;

/// A layout of `size` bytes, 8-aligned.
pub fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// The length of the region that starts at `p`, which must exist (a large
/// block starts its region, L1).
pub fn region_len(p: *mut u8) -> usize {
    let r = spf::region_at(p).expect("a large block lies in an spf region");
    assert_eq!(r.start, p as usize, "a large block starts its region");
    r.len
}
