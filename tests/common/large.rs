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

/// How many of the 4 KiB pages of `[p, p + len)` are resident (`mincore`
/// reads only the page tables: `p` need not be a live block, only inside a
/// mapping).
pub fn resident_pages(p: *mut u8, len: usize) -> usize {
    let pages = len.div_ceil(4096);
    let mut v = vec![0u8; pages];
    // SAFETY: `v` has one byte per page of the range; mincore writes only
    // those and reads no memory of the range.
    let rc = unsafe { libc::mincore(p.cast(), len, v.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    v.iter().filter(|&&b| b & 1 != 0).count()
}
