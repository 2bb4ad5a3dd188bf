//! A block that `realloc` must move does not take a much larger cached
//! block (its own process: the cache is global, and the other large-reuse
//! tests expect their own blocks to be what is cached).

use spf::SpfAlloc;
use std::alloc::{alloc, dealloc, realloc, Layout};

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

const MIB: usize = 1 << 20;
const GRANULE: usize = 64 << 10;

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// Writes `tag` at every 4 KiB page of `[0, to)`.
///
/// # Safety
/// `p` is a live block of at least `to` bytes.
unsafe fn fill(p: *mut u8, to: usize, tag: u8) {
    for off in (0..to).step_by(4096) {
        // SAFETY: inside the block (the caller's contract).
        unsafe { p.add(off).write(tag) };
    }
}

/// Checks what `fill` wrote.
///
/// # Safety
/// `p` is a live block of at least `to` bytes.
unsafe fn check(p: *mut u8, to: usize, tag: u8) {
    for off in (0..to).step_by(4096) {
        // SAFETY: inside the block.
        assert_eq!(unsafe { p.add(off).read() }, tag, "byte {off}");
    }
}

#[test]
fn a_moving_realloc_does_not_take_a_much_larger_cached_block() {
    spf::set_decay_ms(60_000);
    // 18 MiB: a multiple of 2 MiB, so that two blocks can lie side by
    // side though eager blocks of 2 MiB or more start on 2 MiB boundaries.
    let (a_l, cached_l) = (layout(18 * MIB), layout(56 * MIB));
    // SAFETY: valid layouts; every access stays inside the blocks.
    unsafe {
        // A block that cannot grow in place: another one right after it.
        let (mut a, mut after) = (alloc(a_l), alloc(a_l));
        let mut spare = Vec::new();
        while after as usize != a as usize + a_l.size().next_multiple_of(GRANULE) {
            assert!(spare.len() < 16, "no two adjacent 18 MiB blocks");
            spare.push(a);
            (a, after) = (after, alloc(a_l));
        }
        let c = alloc(cached_l);
        fill(c, cached_l.size(), 0x61);
        dealloc(c, cached_l);
        fill(a, a_l.size(), 0x16);
        // 36 MiB: the 56 MiB block would hold it shrunk, but a growing
        // buffer must not take it (it could never grow back in place).
        let new = 36 * MIB;
        let q = realloc(a, a_l, new);
        assert!(!q.is_null());
        assert_ne!(q, a, "the block grew over its neighbour");
        assert_ne!(q, c, "a growing realloc shrank a 56 MiB cached block");
        check(q, a_l.size(), 0x16);
        dealloc(q, layout(new));
        dealloc(after, a_l);
        for s in spare {
            dealloc(s, a_l);
        }
    }
}
