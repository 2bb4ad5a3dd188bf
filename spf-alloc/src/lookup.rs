//! Pointer → block: what spf can tell about an address without the
//! `Layout` it was allocated with. `GlobalAlloc` callers give the layout
//! back to `dealloc`; callers that keep none — the C ABI of `libspf.so`
//! (`free`, `realloc`, `malloc_usable_size`) — ask [`block_layout`], which
//! reads the metadata spf already keeps, so there is no side table:
//!
//! - a *large* block is an spf-core region of its own that starts at the
//!   block (L1 in `large`): the region lookup gives its length;
//! - a *small or medium* block lies in a 4 MiB segment (a region of exactly
//!   that size and alignment, whose header starts with the segment magic)
//!   and never at its start, since the segment's first 64 KiB are the
//!   header; its page descriptor (masking, as in `segment::page_of`) gives the
//!   class. A medium segment is recognised by the medium class of the
//!   descriptor at the 256 KiB boundary below the pointer (descriptors 4,
//!   8, …, 60); a small segment's descriptors there hold small classes.
//!
//! A segment's header page and a large block both start their region; the
//! segment magic in the first word tells them apart (see [`block_layout`]
//! for the one collision it leaves).
//!
//! Cost: one lock-free region lookup (`spf_core::region_at`) and a few
//! loads; for large blocks also a scan of the large cache under its lock.

use crate::large;
use crate::segment::{
    PageKind, Segment, HEADER_PAGES, MAGIC, PER_MEDIUM, SEGMENT_SIZE, SMALL_PAGE_SIZE,
};
use crate::size_class::{block_size, MAX_PAGE_ALIGN, MEDIUM_MAX};
use core::alloc::Layout;

/// A `Layout` for the block that starts at `ptr`, if spf handed it out and
/// it may be live: `SpfAlloc::dealloc`, `realloc` and [`crate::usable_size`]
/// accept it in place of the layout the block was allocated with, and its
/// size is the block's usable size (the class size, or the large region's
/// length), at least what was requested.
///
/// `None` for a pointer spf never handed out (outside spf's space, in a
/// region that is not a segment or large block, not at the start of a
/// block, or inside a segment's header), and for a large block already
/// freed. A freed *small* block is not recognised here (release builds keep
/// no per-block state; debug builds catch the double free in `dealloc`).
///
/// Sound for any pointer value: it reads only spf's own live metadata,
/// and the first word of a live region exactly 4 MiB long and 4 MiB
/// aligned (to compare it with the segment magic: a segment's header, a
/// large block, a heap chunk or a region the program made itself). A
/// large block of exactly 4 MiB on a 4 MiB boundary whose first eight
/// bytes are the magic ("SPFSEGMT" in little-endian order) would be taken
/// for a segment's header and answer `None`: its free would be reported
/// as misuse, never mistaken for another block.
pub fn block_layout(ptr: *const u8) -> Option<Layout> {
    let addr = ptr as usize;
    let region = spf_core::region_at(ptr)?;
    let seg_start = addr & !(SEGMENT_SIZE - 1);
    let segment = region.start == seg_start && region.len == SEGMENT_SIZE && {
        let seg = seg_start as *const Segment;
        // SAFETY: a live 4 MiB region; its first word is readable (a
        // segment's is committed; another region's read at worst commits it).
        unsafe { core::ptr::addr_of!((*seg).magic).read() == MAGIC }
    };
    if region.start == addr && !segment {
        if large::is_cached(ptr) {
            return None;
        }
        // A large block at most MEDIUM_MAX long was large because of its
        // alignment: keep it above the pages' (see `size_class::class_for`).
        let align = if region.len > MEDIUM_MAX {
            16
        } else {
            2 * MAX_PAGE_ALIGN
        };
        return Layout::from_size_align(region.len, align).ok();
    }
    if !segment {
        return None;
    }
    let seg = seg_start as *const Segment;
    let index = (addr - seg_start) / SMALL_PAGE_SIZE;
    // SAFETY: a live segment: its header stays until every page is free,
    // and a pointer into a page in use keeps that page from the pool.
    let pages = unsafe { &(*seg).pages };
    let medium = &pages[index & !(PER_MEDIUM - 1)];
    let page = match medium.kind() {
        PageKind::Small => &pages[index],
        PageKind::Medium => medium,
    };
    let class = page.class.get() as usize;
    let size = block_size(class);
    let offset = addr.wrapping_sub(page.area.get() as usize);
    if index < HEADER_PAGES || offset % size != 0 || offset / size >= page.reserved.get() as usize {
        return None;
    }
    // `class_for(size, 16)` is `class` again: classes are tight.
    Layout::from_size_align(size, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SpfAlloc;
    use core::alloc::GlobalAlloc;

    #[test]
    fn every_kind_of_block_is_found_with_a_layout_that_frees_it() {
        let a = SpfAlloc::new();
        let mut sizes = vec![1, 8, 16, 17, 100, 128, 129, 1000, 4096, 8192, 8193];
        sizes.extend([
            40_000,
            200_000,
            MEDIUM_MAX,
            MEDIUM_MAX + 1,
            3 << 20,
            4 << 20,
        ]);
        for align in [8, 16, 64, 4096, 64 << 10, 128 << 10, 4 << 20] {
            for &size in &sizes {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size.
                let p = unsafe { a.alloc(layout) };
                assert!(!p.is_null());
                let found = block_layout(p).unwrap_or_else(|| panic!("{size}/{align} not found"));
                assert!(found.size() >= size, "{size}/{align}: {found:?}");
                assert_eq!(found.size(), crate::usable_size(found));
                assert_eq!(found.size(), crate::usable_size(layout), "{size}/{align}");
                // Interior pointers are not blocks.
                assert_eq!(block_layout(p.wrapping_add(8)), None, "{size}/{align}");
                // SAFETY: the whole usable size may be written.
                unsafe { p.write_bytes(0xa5, found.size()) };
                // SAFETY: `found` stands in for `layout` (the contract above).
                unsafe { a.dealloc(p, found) };
            }
        }
    }

    #[test]
    fn a_found_layout_reallocates_like_the_original() {
        let a = SpfAlloc::new();
        // SAFETY: non-zero sizes; each block is used once.
        unsafe {
            let mut p = a.alloc(Layout::from_size_align(24, 8).unwrap());
            p.write_bytes(7, 24);
            for new_size in [30, 5000, 300_000, 5 << 20, 100_000, 10] {
                let old = block_layout(p).unwrap();
                p = a.realloc(p, old, new_size);
                assert!(!p.is_null());
                assert!(block_layout(p).unwrap().size() >= new_size);
                assert_eq!(core::slice::from_raw_parts(p, 10), &[7; 10]);
            }
            a.dealloc(p, block_layout(p).unwrap());
        }
    }

    #[test]
    fn pointers_spf_never_handed_out_are_not_blocks() {
        let on_stack = 0u64;
        assert_eq!(block_layout(&on_stack as *const u64 as *const u8), None);
        assert_eq!(block_layout(core::ptr::null()), None);
        // SAFETY: plain libc allocation, freed below.
        let from_libc = unsafe { libc::malloc(64) } as *const u8;
        assert_eq!(block_layout(from_libc), None);
        // SAFETY: from libc::malloc.
        unsafe { libc::free(from_libc as *mut libc::c_void) };
        let a = SpfAlloc::new();
        let layout = Layout::from_size_align(16, 16).unwrap();
        // SAFETY: a non-zero size.
        let p = unsafe { a.alloc(layout) };
        let header = (p as usize & !(SEGMENT_SIZE - 1)) as *const u8;
        assert_eq!(block_layout(header), None, "a segment's header");
        assert_eq!(block_layout(header.wrapping_add(100)), None);
        // SAFETY: allocated above.
        unsafe { a.dealloc(p, layout) };
        // A freed large block waits in the cache: no longer a block.
        let big = Layout::from_size_align((6 << 20) + 1, 16).unwrap();
        // SAFETY: a non-zero size; freed once.
        let q = unsafe { a.alloc(big) };
        assert!(block_layout(q).is_some());
        // SAFETY: allocated above.
        unsafe { a.dealloc(q, big) };
        assert_eq!(block_layout(q), None, "a freed large block");
        // A region that is not the allocator's.
        let r = spf_core::Region::reserve(1 << 20, spf_core::RegionOptions::default()).unwrap();
        assert_eq!(block_layout(r.as_ptr().wrapping_add(4096)), None);
    }
}
